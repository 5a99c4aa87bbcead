"""One batch of product events, end to end, in the order the stages run:

    parse -> newest per product -> claim the products -> plan against stored state -> fetch and
    fingerprint -> encode through the cache -> fuse -> commit: delete, rewrite payloads, write points

The Faust agent calls ``Pipeline.process`` once per batch (the benchmark and the tests call it
directly too); re-indexing calls ``Pipeline.apply`` with events rebuilt from stored payloads.

Correctness rules kept here, in one place:
- the highest ``version`` per product wins; an older event is skipped and counted, a repeat of
  the stored version changes nothing (replays and backfills are harmless);
- a delete leaves a tombstone so an older upsert replayed later cannot bring the product back;
- a modality whose content is unchanged is read from the cache, never re-encoded; an update
  whose content (text, image and video bytes, model versions) is unchanged rewrites only the
  payload: no cache read, no fusion, no vector write;
- several batches may be in flight at once (``SHELFSTREAM_BATCHES_IN_FLIGHT``), so that one
  encodes while another fetches, fuses or writes; a batch claims its products first
  (``ProductClaims``), so no two batches ever read-decide-write the same product at once, and
  all of a batch's writes happen in one short step under ``Pipeline.committing``;
- bad input never stops the batch: a failure is a value (``Failure``) carried to the end, where
  ``Pipeline.process`` turns it into a dead letter; only the services' own errors escape, so
  the agent retries the batch instead of committing past unwritten events.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping, Sequence, TypeAlias, TypeVar

import httpx
import numpy as np
import redis
from PIL import Image
from qdrant_client.http.exceptions import ResponseHandlingException

from encoders_onnx.decoding import DECODER_VERSION, MediaError, PixelBudget, load_image
from encoders_onnx.fusion import MODALITIES, ModalityBatch
from encoders_onnx.session import l2_normalize
from streams.adapters.cache import FeatureCache, feature_key
from streams.adapters.media import BatchFetcher, LocalDigests, MediaLimits, content_hash, fetch_bytes, local_path
from streams.adapters.store import ProductPoint, ProductStore, StoredState, category_prefixes
from streams.adapters.tombstones import Tombstones
from streams.schema.events import EventError, EventLimits, ProductEvent, parse_event
from streams.settings import Settings
from streams.worker.encoders import Encoders, load_encoders
from streams.worker.metrics import TimedStore, WorkerMetrics

log = logging.getLogger("shelfstream.pipeline")
T = TypeVar("T")

# Errors of the services themselves (Redis, Qdrant, the network): the batch is retried with
# backoff until they come back, because committing past unwritten events would lose them.
SERVICE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.BusyLoadingError,
    ResponseHandlingException, httpx.TransportError,
)
PROCESSING_FAILED = "processing_failed"
STORED_ERROR = "stored_media_error"  # a modality failure recorded when unchanged content was first encoded
# Media failures that say nothing about the medium itself (its host was slow): the product is
# indexed without it now and its event is retried later instead of dead-lettered.
RETRIED_MEDIA_CODES = frozenset({"timeout", "changed"})


# -- values that flow through the stages ------------------------------------------------------


@dataclass(frozen=True)
class IncomingMessage:
    """A raw Kafka record: the value stays as bytes so a dead letter carries the original."""

    value: bytes | None
    key: bytes | None = None
    topic: str = ""
    partition: int = -1
    offset: int = -1


@dataclass(frozen=True)
class Failure:
    """Why one item failed: ``code`` for machines (``invalid_event``, ``over_limit``, a media
    error code such as ``not_found``, ``processing_failed``), ``reason`` for people."""

    code: str
    reason: str


Encoded: TypeAlias = np.ndarray | Failure  # one item's result: its vector, or why there is none


@dataclass(frozen=True)
class DeadLetter:
    message: IncomingMessage
    failure: Failure

    @property
    def reason(self) -> str:
        return self.failure.reason


@dataclass(frozen=True)
class RetryLater:
    """An indexed product whose medium timed out: its event is processed again later."""

    message: IncomingMessage
    failure: Failure


@dataclass
class BatchOutcome:
    """What a batch did. ``failures`` are by product (``apply`` knows no messages);
    ``process`` turns them into ``dead_letters``, or ``retries`` when a medium timed out."""

    indexed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    failures: dict[str, list[Failure]] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    retries: list[RetryLater] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    freshness_ms: list[float] = field(default_factory=list)

    def merge(self, other: "BatchOutcome") -> None:
        self.indexed += other.indexed
        self.deleted += other.deleted
        for product_id, failures in other.failures.items():
            self.failures.setdefault(product_id, []).extend(failures)
        self.dead_letters += other.dead_letters
        self.retries += other.retries
        self.counts.update(other.counts)
        self.freshness_ms += other.freshness_ms


class Stats:
    """Running counters and recent freshness samples, served by the worker's ``/stats``."""

    def __init__(self, window: int = 10_000) -> None:
        self.counts: Counter = Counter()
        self.freshness_ms: deque[float] = deque(maxlen=window)
        self.last_batch_at: float | None = None  # wall clock: a benchmark times a stream's end by it

    def add(self, outcome: BatchOutcome) -> None:
        self.counts.update(outcome.counts)
        self.freshness_ms.extend(outcome.freshness_ms)
        self.last_batch_at = time.time()

    def snapshot(self) -> dict:
        samples = np.asarray(self.freshness_ms, dtype=np.float64)
        freshness = (
            {"freshness_p50_ms": float(np.percentile(samples, 50)), "freshness_p99_ms": float(np.percentile(samples, 99))}
            if samples.size else {"freshness_p50_ms": None, "freshness_p99_ms": None}
        )
        return {"counts": dict(self.counts), **freshness, "last_batch_at": self.last_batch_at}


@dataclass(frozen=True)
class Plan:
    """What to do with the newest event of each product, given what is stored."""

    deletes: tuple[ProductEvent, ...] = ()
    upserts: tuple[ProductEvent, ...] = ()
    stale: int = 0
    duplicates: int = 0


@dataclass(frozen=True)
class Media:
    """Fetched content with its sha256, computed once: the fingerprint and the cache keys use it.
    ``data`` is None for a local file known unchanged by its identity (``LocalDigests``): it is
    read only if an encoder needs it (``Pipeline._data``), which a cache hit spares."""

    uri: str
    data: bytes | None
    digest: str


@dataclass(frozen=True)
class Fetched:
    """An upsert with its media loaded and its content fingerprinted; ``failures`` holds each
    modality's first failure (the payload and the dead letter carry it)."""

    event: ProductEvent
    images: tuple[Media, ...]
    video: Media | None
    failures: Mapping[str, Failure]
    fingerprint: str


@dataclass(frozen=True)
class EncodedProduct:
    """A fetched upsert with the vector of every modality that encoded."""

    fetched: Fetched
    vectors: Mapping[str, np.ndarray]
    failures: Mapping[str, Failure]


class ProductClaims:
    """The products whose batch is between reading their stored state and writing them. A batch
    waits until none of its products is claimed, then claims them all at once (so two batches
    never wait for each other in a cycle): an engine has no conditional write, and a batch that
    planned against a state another batch is about to change would write over a newer version."""

    def __init__(self) -> None:
        self._claimed: set[str] = set()
        self._released = threading.Condition()

    @contextmanager
    def hold(self, product_ids: Iterable[str]) -> Iterator[None]:
        wanted = set(product_ids)
        with self._released:
            self._released.wait_for(lambda: self._claimed.isdisjoint(wanted))
            self._claimed |= wanted
        try:
            yield
        finally:
            with self._released:
                self._claimed -= wanted
                self._released.notify_all()


@dataclass
class Changes:
    """Everything a batch will write, decided and computed before any of it is written."""

    deletes: list[ProductEvent] = field(default_factory=list)
    payloads: dict[str, dict] = field(default_factory=dict)  # payload-only rewrites
    current: Mapping[str, StoredState] = field(default_factory=dict)
    points: list[ProductPoint] = field(default_factory=list)
    untombstone: list[str] = field(default_factory=list)
    applied: list[ProductEvent] = field(default_factory=list)  # their freshness ends at the commit


# -- the two stages that need no service: newest per product, plan against stored state ---------


def newest_per_product(
    parsed: Sequence[tuple[ProductEvent, IncomingMessage]], counts: Counter
) -> dict[str, tuple[ProductEvent, IncomingMessage]]:
    """Keep only the highest version of each product in the batch; count what is dropped."""
    latest: dict[str, tuple[ProductEvent, IncomingMessage]] = {}
    for event, message in parsed:
        seen = latest.get(event.product_id)
        if seen is None or event.version > seen[0].version:
            if seen is not None:
                counts["stale_skipped"] += 1
            latest[event.product_id] = (event, message)
        elif event.version == seen[0].version:
            counts["duplicates"] += 1
        else:
            counts["stale_skipped"] += 1
    return latest


def plan_against(events: Sequence[ProductEvent], current: Mapping[str, StoredState], redo: bool = False) -> Plan:
    """Older than stored: stale. Same version: a duplicate, except that a delete wins a tie with
    a live point, and that ``redo`` (a media retry) upserts a live point's own version again.
    Otherwise delete or upsert."""
    deletes, upserts, stale, duplicates = [], [], 0, 0
    for event in events:
        known = current.get(event.product_id)
        live = known is not None and known.fingerprint is not None
        if known is not None and event.version < known.version:
            stale += 1
        elif known is not None and event.version == known.version and not (
                live and (event.op == "delete" or redo)):
            duplicates += 1
        else:
            (deletes if event.op == "delete" else upserts).append(event)
    return Plan(tuple(deletes), tuple(upserts), stale, duplicates)


class Pipeline:
    def __init__(self, settings: Settings, encoders: Encoders, cache: FeatureCache, store: ProductStore,
                 tombstones: Tombstones, metrics: WorkerMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or WorkerMetrics()
        self.encoders = encoders
        self.cache = cache
        self.store = store
        self.tombstones = tombstones
        self.event_limits = EventLimits.from_settings(settings)
        self.image_limits = MediaLimits.for_images(settings)
        self.video_limits = MediaLimits.for_videos(settings)
        self._io = ThreadPoolExecutor(max_workers=8, thread_name_prefix="media")
        self._downloads = BatchFetcher(self._io, per_host=settings.fetch_per_host)
        self._local = LocalDigests()
        # the full-size buffers decoded at once, across the pool's threads (JPEGs decode downscaled)
        self._pixel_budget = PixelBudget(settings.decode_pixel_budget)
        # an image vector depends on the decoder too: the same bytes decode to other pixels after a change
        self._image_version = f"{encoders.image.version}+{DECODER_VERSION}"
        # read-decide-write of a batch and of a re-index page must not interleave on a product, or
        # an older version could be written over a newer one between the check and the write
        self._claims = ProductClaims()
        # held for a batch's writes and whatever must become visible with them (the worker's
        # counters): a reader holding it sees every batch either wholly written or not at all
        self.committing = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, metrics: WorkerMetrics | None = None) -> "Pipeline":
        """Load the models and connect to Redis and Qdrant as the settings say."""
        metrics = metrics or WorkerMetrics()
        encoders = load_encoders(settings)
        metrics.set_models(encoders.versions)
        store = TimedStore(ProductStore(settings, encoders.fusion.dims, encoders.store_version), metrics)
        return cls(settings, encoders, FeatureCache(settings.redis_url, settings.cache_ttl_s), store,
                   Tombstones(settings.redis_url), metrics)

    def close(self) -> None:
        self._io.shutdown(wait=False)
        self.store.close()
        self.cache.close()
        self.tombstones.close()

    # -- public entry points ----------------------------------------------------------------------

    def process(self, messages: Sequence[IncomingMessage], retry: bool = False,
                committed: Callable[[BatchOutcome], None] = lambda outcome: None) -> BatchOutcome:
        """A batch of raw messages, with the whole dead-letter policy: an invalid event, and each
        failed modality of an indexed product, is a dead letter with its reason, except a
        medium that timed out: that product's message is in ``retries``. A batch that fails for
        a reason no check foresaw is rerun one message at a time so that only the message that
        fails on its own is dead-lettered. The services' errors propagate. ``retry``: these
        messages were processed before (a media retry), so their own version is redone.
        ``committed`` gets each part of the returned outcome under ``committing``, right after
        that part's writes."""
        try:
            return self._process_batch(messages, retry, committed)
        except SERVICE_ERRORS:
            raise
        except Exception as exc:  # a bug or an input no check foresaw
            if len(messages) > 1:
                log.warning("batch of %d failed (%r); retrying one event at a time", len(messages), exc)
                outcome = BatchOutcome()
                for message in messages:
                    outcome.merge(self.process([message], retry, committed))
                return outcome
            log.exception("event failed, dead-lettered")
            outcome = BatchOutcome(dead_letters=[DeadLetter(messages[0], Failure(PROCESSING_FAILED, f"processing failed: {exc!r}"))])
            outcome.counts["dead_lettered"] += 1
            with self.committing:  # nothing to write
                committed(outcome)
            return outcome

    def apply(self, events: Sequence[ProductEvent], redo: bool = False) -> BatchOutcome:
        """Bring the store up to date with ``events`` (at most one per product), planned against
        what is stored and the tombstones; per-product failures come back in ``failures``."""
        with self._claims.hold(e.product_id for e in events):
            outcome, changes = self._prepare(events, redo)
            with self.committing:
                self._commit(changes, outcome)
        return outcome

    # -- the stages, in order ---------------------------------------------------------------------

    def _process_batch(self, messages: Sequence[IncomingMessage], retry: bool,
                       committed: Callable[[BatchOutcome], None]) -> BatchOutcome:
        outcome = BatchOutcome()
        parsed: list[tuple[ProductEvent, IncomingMessage]] = []
        for message in messages:
            try:
                parsed.append((parse_event(message.value, self.event_limits), message))
            except EventError as exc:
                outcome.dead_letters.append(DeadLetter(message, Failure(exc.code, f"invalid event: {exc}")))
        outcome.counts["events"] += len(parsed)
        latest = newest_per_product(parsed, outcome.counts)
        with self._claims.hold(latest):
            applied, changes = self._prepare([event for event, _ in latest.values()], redo=retry)
            outcome.merge(applied)
            for product_id, failures in outcome.failures.items():
                message = latest[product_id][1]
                timed_out = [f for f in failures if f.code in RETRIED_MEDIA_CODES]
                if timed_out:
                    outcome.retries.append(RetryLater(message, timed_out[0]))
                outcome.dead_letters += [DeadLetter(message, f) for f in failures if f.code not in RETRIED_MEDIA_CODES]
            outcome.counts["media_retries"] += len(outcome.retries)
            outcome.counts["dead_lettered"] += len(outcome.dead_letters)
            with self.committing:
                self._commit(changes, outcome)
                committed(outcome)
        return outcome

    def _prepare(self, events: Sequence[ProductEvent], redo: bool) -> tuple[BatchOutcome, Changes]:
        """Plan against the stored state and compute every write; nothing is written yet."""
        outcome, changes = BatchOutcome(), Changes()
        current, tombstoned = self._current([e.product_id for e in events])
        plan = plan_against(events, current, redo)
        outcome.counts["stale_skipped"] += plan.stale
        outcome.counts["duplicates"] += plan.duplicates
        changes.deletes = list(plan.deletes)
        changes.applied = [*plan.deletes, *plan.upserts]
        if plan.deletes:
            outcome.deleted.extend(e.product_id for e in plan.deletes)
            outcome.counts["deleted"] += len(plan.deletes)
        if plan.upserts:
            self._upsert(plan.upserts, current, tombstoned, outcome, changes)
        return outcome, changes

    def _commit(self, changes: Changes, outcome: BatchOutcome) -> None:
        """A batch's writes, in one step: deletes (with their tombstones), payload-only rewrites,
        new points, then the tombstones of re-created products go."""
        if changes.deletes:
            self.store.delete([e.product_id for e in changes.deletes])
            self.tombstones.record({e.product_id: e.version for e in changes.deletes})
        if changes.payloads:
            self.store.overwrite_payloads(changes.payloads, changes.current)
        if changes.points:
            self.store.upsert(changes.points)
        if changes.untombstone:
            self.tombstones.clear(changes.untombstone)
        now = time.time()
        outcome.freshness_ms.extend((now - e.event_time) * 1000.0 for e in changes.applied)

    def _current(self, product_ids: list[str]) -> tuple[dict[str, StoredState], set[str]]:
        """What is stored or was deleted (a tombstone newer than the point wins), and which of the
        products have a tombstone."""
        current = self.store.states(product_ids)
        tombstones = self.tombstones.versions(product_ids)
        for product_id, version in tombstones.items():
            if product_id not in current or version > current[product_id].version:
                current[product_id] = StoredState(version)
        return current, set(tombstones)

    def _upsert(self, upserts: Sequence[ProductEvent], current: Mapping[str, StoredState], tombstoned: set[str],
                outcome: BatchOutcome, changes: Changes) -> None:
        """Unchanged content: rewrite the payload only. Changed: encode (cache first), fuse, and
        make its point. The tombstones of re-created products go (a Redis round trip only when
        there are some)."""
        fetched = self._fetch(upserts)
        unchanged = [f for f in fetched if _stored_fingerprint(current, f) == f.fingerprint]
        changed = [f for f in fetched if _stored_fingerprint(current, f) != f.fingerprint]
        # unchanged content keeps the decode errors found when it was encoded
        kept = [(f, {**_stored_failures(current[f.event.product_id]), **f.failures}) for f in unchanged]
        if kept:
            changes.payloads = {
                f.event.product_id: self._payload(f, current[f.event.product_id].modalities, failures) for f, failures in kept
            }
            changes.current = current
            outcome.counts["payload_only"] += len(kept)
        encoded = self._encode(changed, outcome.counts)
        changes.points = self._points(encoded)
        changes.untombstone = [e.product_id for e in upserts if e.product_id in tombstoned]
        outcome.indexed.extend(e.product_id for e in upserts)
        outcome.counts["indexed"] += len(upserts)
        for product, failures in [*kept, *((e.fetched, e.failures) for e in encoded)]:
            if failures:
                outcome.failures[product.event.product_id] = [
                    Failure(f.code, f"{modality}: {f.reason}") for modality, f in failures.items()
                ]

    def _fetch(self, events: Sequence[ProductEvent]) -> list[Fetched]:
        """Fetch every image and video of the batch, bounded by the media limits, then
        fingerprint each product's content. Downloads run in parallel, a few at a time per
        host, and all end at the batch's media deadline; local files are read inline (a thread
        hand-off costs more than reading a small file)."""
        wanted = [(i, "image", uri) for i, event in enumerate(events) for uri in event.image_uris[: self.settings.max_images]]
        wanted += [(i, "video", event.video_uri) for i, event in enumerate(events) if event.video_uri]

        def limits(modality: str) -> MediaLimits:
            return self.video_limits if modality == "video" else self.image_limits

        def as_media(uri: str, result: bytes | MediaError) -> Media | Failure:
            if isinstance(result, MediaError):
                return Failure(result.code, f"{uri}: {result}")
            return Media(uri, result, content_hash(result))

        def fetch(item: tuple[int, str, str]) -> Media | Failure:
            _, modality, uri = item
            try:
                path = local_path(uri)
                if path is None:
                    return as_media(uri, fetch_bytes(uri, limits(modality)))
                digest = self._local.known(path, limits(modality))
                return Media(uri, None, digest) if digest is not None else Media(uri, *self._local.read(path, limits(modality)))
            except MediaError as exc:
                return as_media(uri, exc)

        remote = [item for item in wanted if item[2].startswith(("http://", "https://"))]
        results = self._downloads.fetch_all([(uri, limits(modality)) for _, modality, uri in remote],
                                            deadline_s=self.settings.media_deadline_s) if remote else []
        downloaded = {item: as_media(item[2], result) for item, result in zip(remote, results)}
        media: list[dict[str, list[Media | Failure]]] = [{"image": [], "video": []} for _ in events]
        for item in wanted:  # in the event's order: the first image stays first
            media[item[0]][item[1]].append(downloaded[item] if item in downloaded else fetch(item))
        fetched = []
        for event, loaded in zip(events, media):
            images = [m for m in loaded["image"] if isinstance(m, Media)]
            video = next((m for m in loaded["video"] if isinstance(m, Media)), None)
            failures = {modality: next(f for f in results if isinstance(f, Failure))
                        for modality, results in loaded.items() if any(isinstance(f, Failure) for f in results)}
            fetched.append(Fetched(event, tuple(images), video, failures, self._fingerprint(event, images, video)))
        return fetched

    def _fingerprint(self, event: ProductEvent, images: Sequence[Media], video: Media | None) -> str:
        return content_hash(json.dumps({
            "models": self.encoders.versions,
            "decoder": DECODER_VERSION,
            "text": event.text,
            "images": [media.digest for media in images],
            "video": video.digest if video else None,
        }, sort_keys=True).encode())

    def _encode(self, products: Sequence[Fetched], counts: Counter) -> list[EncodedProduct]:
        """Each modality of each product through the cache; an image-less or failed modality is
        left out, an image vector is the mean of the product's image vectors."""
        texts = [p.event.text for p in products]
        text_vectors = self._cached("text", self.encoders.text.version, texts, [content_hash(t.encode()) for t in texts],
                                    self._encode_texts, counts)
        images = [(product, media) for product in products for media in product.images]
        image_vectors = self._cached("image", self._image_version, [m for _, m in images],
                                     [m.digest for _, m in images], self._encode_images, counts)
        videos = [(product, product.video) for product in products if product.video is not None]
        video_vectors = self._cached("video", self.encoders.video.version, [m for _, m in videos],
                                     [m.digest for _, m in videos], self._encode_videos, counts)
        video_of = {id(p): (m, v) for (p, m), v in zip(videos, video_vectors)}

        encoded = []
        for product, text_vector in zip(products, text_vectors):
            failures = dict(product.failures)
            vectors = {"text": text_vector}  # text never fails: a blank title is rejected earlier
            mine = [(m, r) for (p, m), r in zip(images, image_vectors) if p is product]
            good = [r for _, r in mine if not isinstance(r, Failure)]
            for media, result in mine:
                if isinstance(result, Failure):
                    failures.setdefault("image", Failure(result.code, f"{media.uri}: {result.reason}"))
            if good:
                vectors["image"] = l2_normalize(np.mean(good, axis=0, keepdims=True))[0]
            media, video = video_of.get(id(product), (None, None))
            if isinstance(video, Failure) and media is not None:
                failures.setdefault("video", Failure(video.code, f"{media.uri}: {video.reason}"))
            elif video is not None:
                vectors["video"] = video
            encoded.append(EncodedProduct(product, vectors, failures))
        return encoded

    def _encode_texts(self, texts: list[str]) -> list[Encoded]:
        return list(self.encoders.text.encode(texts, batch_size=self.settings.batch_size))

    def _encode_images(self, media: list[Media]) -> list[Encoded]:
        """Decoded and encoded ``image_chunk`` at a time: a batch holds at most that many decoded
        images, and its full-size decode buffers stay within the pixel budget."""
        def decode(image: Media) -> Image.Image | Failure:
            try:
                return load_image(self._data(image, self.image_limits), self.settings.max_image_pixels, self._pixel_budget)
            except MediaError as exc:
                return Failure(exc.code, str(exc))

        results: list[Encoded] = []
        for start in range(0, len(media), self.settings.image_chunk):
            decoded = list(self._io.map(decode, media[start: start + self.settings.image_chunk]))
            good = [image for image in decoded if not isinstance(image, Failure)]
            vectors = iter(self.encoders.image.encode(good, batch_size=self.settings.batch_size) if good else [])
            results += [image if isinstance(image, Failure) else next(vectors) for image in decoded]
        return results

    def _encode_videos(self, media: list[Media]) -> list[Encoded]:
        def load(video: Media) -> bytes | MediaError:
            try:
                return self._data(video, self.video_limits)
            except MediaError as exc:
                return exc

        loaded = [load(video) for video in media]
        decoded = iter(self.encoders.video.encode_many([data for data in loaded if isinstance(data, bytes)]))
        results = (data if isinstance(data, MediaError) else next(decoded) for data in loaded)
        return [Failure(r.code, str(r)) if isinstance(r, MediaError) else r.vector for r in results]

    def _data(self, media: Media, limits: MediaLimits) -> bytes:
        """The bytes of ``media``, read now if its fetch was spared by its known digest; content
        that changed since is a ``changed`` MediaError (retried: its fingerprint is stale)."""
        if media.data is not None:
            return media.data
        data, digest = self._local.read(local_path(media.uri) or media.uri, limits)
        if digest != media.digest:
            raise MediaError("changed", f"{media.uri} changed while its batch was being indexed")
        return data

    def _cached(
        self,
        modality: str,
        model_version: str,
        inputs: list[T],
        digests: list[str],
        encode: Callable[[list[T]], list[Encoded]],
        counts: Counter,
    ) -> list[Encoded]:
        """Results for ``inputs``: vectors from Redis by content hash, encoding (once per
        distinct content, in one batch) only what is missing. Failures are not cached."""
        keys = [feature_key(model_version, modality, digest) for digest in digests]
        cached = self.cache.get_many(keys)
        missing: dict[str, int] = {}
        for i, (key, vector) in enumerate(zip(keys, cached)):
            if vector is None:
                missing.setdefault(key, i)
        counts[f"cache_lookups_{modality}"] += len(keys)
        counts[f"cache_hits_{modality}"] += sum(vector is not None for vector in cached)
        counts[f"encoded_{modality}"] += len(missing)
        encoded: dict[str, Encoded] = {}
        if missing:
            started = time.perf_counter()
            encoded = dict(zip(missing, encode([inputs[i] for i in missing.values()])))
            self.metrics.record_encode(modality, time.perf_counter() - started)
        self.cache.put_many({k: v for k, v in encoded.items() if not isinstance(v, Failure)})
        return [encoded[key] if vector is None else vector for key, vector in zip(keys, cached)]

    def _points(self, products: Sequence[EncodedProduct]) -> list[ProductPoint]:
        """Fuse the modality vectors of the batch in one call: one point per product."""
        if not products:
            return []
        batch: dict[str, ModalityBatch] = {}
        encoder_dims = {"text": self.encoders.text.dim, "image": self.encoders.image.dim, "video": self.encoders.video.dim}
        for modality, dim in encoder_dims.items():
            vectors = np.zeros((len(products), dim), dtype=np.float32)
            present = np.zeros(len(products), dtype=bool)
            for i, product in enumerate(products):
                if modality in product.vectors:
                    vectors[i] = product.vectors[modality]
                    present[i] = True
            batch[modality] = ModalityBatch(vectors, present)
        named = self.encoders.fusion.fuse(batch)
        points = []
        for i, product in enumerate(products):
            vectors = {name: b.vectors[i] for name, b in named.items() if b.present[i]}
            modalities = sorted(name for name in vectors if name in MODALITIES)
            payload = self._payload(product.fetched, modalities, product.failures)
            points.append(ProductPoint(product.fetched.event.product_id, vectors, payload))
        return points

    def _payload(self, product: Fetched, modalities: list[str], failures: Mapping[str, Failure]) -> dict:
        """The stored payload: the event's own fields, then what indexing found out."""
        return {
            **product.event.stored_fields(),
            "category_path": category_prefixes(product.event.category),
            "indexed_at": time.time(),
            "modalities": modalities,
            "errors": {modality: failure.reason for modality, failure in failures.items()},
            "model_version": self.encoders.versions,
            "fingerprint": product.fingerprint,
        }


def _stored_fingerprint(current: Mapping[str, StoredState], product: Fetched) -> str | None:
    stored = current.get(product.event.product_id)
    return stored.fingerprint if stored is not None else None


def _stored_failures(stored: StoredState) -> dict[str, Failure]:
    """The modality errors a stored payload recorded, as failures again."""
    return {modality: Failure(STORED_ERROR, reason) for modality, reason in stored.errors.items()}
