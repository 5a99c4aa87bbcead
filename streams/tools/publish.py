"""Publishing product events: from CSV or JSONL catalogs through the one catalog reader and
mapping dialect (``exporters/catalog.py``), with an idempotent confluent-kafka producer keyed
by product id.

A mapping names, for each event field, the catalog column(s) that hold it, e.g.
``demo/catalog/mapping.json``:

    {"product_id": "id", "title": "productDisplayName",
     "category": ["masterCategory", "subCategory", "articleType"],
     "attributes": ["gender", "baseColour"], "image_uris": "image",
     "currency": {"value": "INR"}}

Fields the mapping leaves out are read from the column of their own name. Relative media paths
are resolved against the catalog file's folder (or the mapping's ``media_root``) and published
as ``file://`` URIs. A mapping that names a column the file lacks is refused up front.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from tqdm import tqdm

from exporters.catalog import BadRow, CatalogMapping, map_row, mapping_values, media_root_of, read_rows, report_skipped
from streams.adapters.kafka import ensure_topics, idempotent_producer
from streams.schema.events import EventError, ProductEvent, event_from_dict
from streams.settings import Settings

NUMERIC_FIELDS = ("price", "version", "event_time")


@dataclass(frozen=True)
class PublishReport:
    published: int
    rejected: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.published / self.seconds if self.seconds > 0 else 0.0

    def line(self, topic: str) -> str:
        rejected = f", {self.rejected} rows rejected" if self.rejected else ""
        return f"published {self.published} events to {topic} in {self.seconds:.2f} s ({self.rate:,.0f} events/s){rejected}"


def load_mapping(path_or_json: str | None) -> dict[str, Any]:
    """A mapping from a JSON file path or an inline JSON object; ``None`` is the identity mapping.
    Its keys are checked here, so a typo is reported before anything is published."""
    values = mapping_values(path_or_json)
    catalog_mapping(values)
    return values


def catalog_mapping(values: Mapping[str, Any]) -> CatalogMapping:
    """``values`` over the identity mapping: an event field left out is read from its own column."""
    return CatalogMapping.from_dict(values, CatalogMapping.event_identity())


def row_to_event_dict(row: Mapping[str, Any], mapping: Mapping[str, Any], media_base: Path, version: int) -> dict[str, Any]:
    """Apply the mapping to one row; the result is validated by ``event_from_dict``."""
    return _event_dict(row, catalog_mapping(mapping), media_base, version)


def _event_dict(row: Mapping[str, Any], mapping: CatalogMapping, media_root: Path, version: int) -> dict[str, Any]:
    data = map_row(row, mapping, media_root)
    for name in NUMERIC_FIELDS:
        if isinstance(data.get(name), str):
            data[name] = _number(data[name], name)
    data.setdefault("op", "upsert")
    data.setdefault("version", version)
    if "image_uris" in data:
        data["image_uris"] = [_uri(uri) for uri in data["image_uris"]]
    if "video_uri" in data:
        data["video_uri"] = _uri(data["video_uri"])
    return data


def catalog_events(path: Path, mapping: Mapping[str, Any], version: int | None = None,
                   on_error: Callable[[int, str], None] | None = None) -> Iterator[ProductEvent]:
    """Events for every valid row; invalid rows are reported through ``on_error`` and skipped
    (without ``on_error`` the first one raises)."""
    version = int(time.time() * 1000) if version is None else version
    resolved = catalog_mapping(mapping)
    media_root = media_root_of(path.resolve(), resolved)
    for number, row in read_rows(path):
        try:
            if isinstance(row, BadRow):
                raise ValueError(row.reason)
            yield event_from_dict(_event_dict(row, resolved, media_root, version))
        except (EventError, ValueError) as exc:
            if on_error is None:
                raise
            on_error(number, str(exc))


class EventPublisher:
    """One idempotent producer for many sends; ``close`` waits until every event is acknowledged
    and raises if any was not."""

    def __init__(self, settings: Settings, topic: str | None = None) -> None:
        ensure_topics(settings)
        self.topic = topic or settings.events_topic
        self.producer = idempotent_producer(settings)
        self.failures: list[str] = []

    def __enter__(self) -> "EventPublisher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_event(self, event: ProductEvent) -> None:
        self.send(event.product_id.encode(), event.to_bytes())

    def send(self, key: bytes | None, value: bytes) -> None:
        while True:
            try:
                self.producer.produce(self.topic, key=key, value=value, on_delivery=self._delivered)
                break
            except BufferError:  # local queue full: let deliveries drain
                self.producer.poll(0.1)
        self.producer.poll(0)

    def close(self, timeout_s: float = 60.0) -> None:
        """Wait for every acknowledgement, then stop the producer's threads and connections now:
        a publisher still referenced (a caller's local) otherwise keeps them, and reconnects to a
        broker that is gone, until the garbage collector finds it."""
        try:
            remaining = self.producer.flush(timeout_s)
        finally:
            self.producer.close()
        if remaining or self.failures:
            raise RuntimeError(f"{remaining} events undelivered, {len(self.failures)} failed: {self.failures[:3]}")

    def _delivered(self, error: Any, message: Any) -> None:
        if error is not None:
            self.failures.append(str(error))


def publish_events(settings: Settings, events: Iterable[ProductEvent], total: int | None = None,
                   progress: bool = False) -> PublishReport:
    return publish_raw(settings, ((e.product_id.encode(), e.to_bytes()) for e in events), total, progress)


def publish_raw(settings: Settings, records: Iterable[tuple[bytes | None, bytes]], total: int | None = None,
                progress: bool = False, topic: str | None = None) -> PublishReport:
    """Produce (key, value) records to the events topic (or ``topic``) and wait until every one is acknowledged."""
    started = time.perf_counter()
    count = 0
    with EventPublisher(settings, topic) as publisher:
        for key, value in tqdm(records, total=total, unit="event", disable=not progress, file=sys.stderr):
            publisher.send(key, value)
            count += 1
    return PublishReport(count, 0, time.perf_counter() - started)


def publish_file(settings: Settings, path: Path, mapping: Mapping[str, Any], version: int | None = None,
                 limit: int | None = None, progress: bool = True) -> PublishReport:
    """Publish a catalog file; a mapping that names a column the file lacks raises ValueError
    before anything is sent, and so does a file whose every row is rejected (the command then
    exits non-zero). Rejected rows are reported on stderr and counted."""
    catalog_mapping(mapping).check_columns(path, [key for key in mapping])
    rejected: list[str] = []
    report_row = report_skipped(path)

    def reject(number: int, reason: str) -> None:
        rejected.append(f"row {number}: {reason}")
        report_row(number, reason)

    events: Iterable[ProductEvent] = catalog_events(path, mapping, version, on_error=reject)
    if limit is not None:
        events = islice(events, limit)
    total = limit if limit is not None else sum(1 for _ in read_rows(path))
    report = publish_events(settings, events, total=total, progress=progress)
    if rejected and not report.published:
        raise ValueError(f"{path}: every row was rejected ({len(rejected)}; first {rejected[0]}): check the mapping")
    return PublishReport(report.published, len(rejected), report.seconds)


def _uri(media: str | Path) -> str:
    """A local path resolved under the media root becomes a ``file://`` URI; the rest stays."""
    return media.resolve().as_uri() if isinstance(media, Path) else media


def _number(value: str, name: str) -> float | int:
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            raise EventError(f"field {name!r} must be a number, got {value!r}") from None
