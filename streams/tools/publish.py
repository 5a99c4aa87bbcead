"""Publishing product events: from CSV or JSONL catalogs through a documented column mapping,
with an idempotent confluent-kafka producer keyed by product id.

A mapping is a JSON object from event fields to the catalog's columns:

    {"product_id": "id", "title": "productDisplayName",
     "category": ["masterCategory", "subCategory", "articleType"],
     "attributes": ["gender", "baseColour"], "image_uris": "image",
     "currency": {"value": "INR"}}

- a string names one column; for ``image_uris`` its value may hold several URIs split by ``|``;
- a list under ``category`` joins those columns into a category path, under ``attributes`` it
  makes one attribute per column (named after it);
- ``{"value": ...}`` is a constant.
Without a mapping, columns (or JSONL keys) are taken as the event's own field names. Relative
media paths are resolved against the catalog file's folder and published as ``file://`` URIs.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from tqdm import tqdm

from streams.adapters.kafka import ensure_topics, idempotent_producer
from streams.schema.events import EventError, ProductEvent, event_from_dict
from streams.settings import Settings

EVENT_FIELDS = ("op", "product_id", "version", "title", "description", "attributes", "category",
                "price", "currency", "image_uris", "video_uri", "event_time")
MEDIA_FIELDS = ("image_uris", "video_uri")
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
    """A mapping from a JSON file path or an inline JSON object; ``None`` is the identity mapping."""
    if not path_or_json:
        return {}
    text = path_or_json if path_or_json.lstrip().startswith("{") else Path(path_or_json).read_text()
    mapping = json.loads(text)
    unknown = set(mapping) - set(EVENT_FIELDS)
    if unknown:
        raise ValueError(f"mapping names unknown event fields {sorted(unknown)}; known: {', '.join(EVENT_FIELDS)}")
    return mapping


def read_rows(path: Path) -> Iterator[dict[str, Any] | ValueError]:
    """Rows of a CSV (header line) or JSONL catalog; a line that is not a JSON object comes as a
    ValueError in its place, so one bad line does not end the catalog."""
    if path.suffix.lower() in {".jsonl", ".ndjson", ".json"}:
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield ValueError(f"not valid JSON ({exc})")
                    continue
                yield row if isinstance(row, dict) else ValueError(f"not a JSON object but {type(row).__name__}")
    else:
        with path.open(encoding="utf-8", newline="") as handle:
            yield from csv.DictReader(handle)


def row_to_event_dict(row: Mapping[str, Any], mapping: Mapping[str, Any], media_base: Path, version: int) -> dict[str, Any]:
    """Apply the mapping to one row; the result is validated by ``event_from_dict``."""
    data: dict[str, Any] = {}
    for name in EVENT_FIELDS:
        spec = mapping.get(name, name)
        if isinstance(spec, dict):
            value = spec.get("value")
        elif isinstance(spec, list):
            value = ([str(row[c]) for c in spec if row.get(c) not in (None, "")] if name == "category"
                     else {c: str(row[c]) for c in spec if row.get(c) not in (None, "")})
        else:
            value = row.get(spec)
        if value not in (None, ""):
            data[name] = value
    for name in NUMERIC_FIELDS:
        if isinstance(data.get(name), str):
            data[name] = _number(data[name], name)
    data.setdefault("op", "upsert")
    data.setdefault("version", version)
    if "image_uris" in data:
        uris = data["image_uris"].split("|") if isinstance(data["image_uris"], str) else data["image_uris"]
        data["image_uris"] = [_media_uri(uri, media_base) for uri in uris if uri]
    if "video_uri" in data:
        data["video_uri"] = _media_uri(data["video_uri"], media_base)
    return data


def catalog_events(path: Path, mapping: Mapping[str, Any], version: int | None = None,
                   on_error: Callable[[int, str], None] | None = None) -> Iterator[ProductEvent]:
    """Events for every valid row; invalid rows are reported through ``on_error`` and skipped."""
    version = int(time.time() * 1000) if version is None else version
    media_base = path.resolve().parent
    for number, row in enumerate(read_rows(path), start=1):
        try:
            if isinstance(row, ValueError):
                raise row
            yield event_from_dict(row_to_event_dict(row, mapping, media_base, version))
        except (EventError, ValueError, KeyError) as exc:
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
        remaining = self.producer.flush(timeout_s)
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
    rejected: list[str] = []

    def reject(number: int, reason: str) -> None:
        rejected.append(f"row {number}: {reason}")
        print(f"skipped {path.name} row {number}: {reason}", file=sys.stderr)

    events: Iterable[ProductEvent] = catalog_events(path, mapping, version, on_error=reject)
    if limit is not None:
        events = islice(events, limit)
    total = limit if limit is not None else _count_rows(path)
    report = publish_events(settings, events, total=total, progress=progress)
    return PublishReport(report.published, len(rejected), report.seconds)


def _count_rows(path: Path) -> int:
    with path.open("rb") as handle:
        lines = sum(1 for line in handle if line.strip())
    return lines - (0 if path.suffix.lower() in {".jsonl", ".ndjson", ".json"} else 1)


def _media_uri(uri: str, base: Path) -> str:
    if "://" in uri or Path(uri).is_absolute():
        return uri
    return (base / uri).resolve().as_uri()


def _number(value: str, name: str) -> float | int:
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            raise EventError(f"field {name!r} must be a number, got {value!r}") from None
