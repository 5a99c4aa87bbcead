"""One batch of product events, end to end: validate, order, load media, encode what the cache
lacks, fuse, and write to Qdrant. The Faust agent calls ``Pipeline.process`` once per batch; the
benchmark and the tests call it directly too.

Correctness rules kept here, in one place:
- the highest ``version`` per product wins; an older event is skipped and counted, a repeat of
  the stored version changes nothing (replays and backfills are harmless);
- a delete leaves a tombstone so an older upsert replayed later cannot bring the product back;
- a modality whose content is unchanged is read from the cache, never re-encoded; an update
  whose content (text, image and video bytes, model versions) is unchanged rewrites only the
  payload: no cache read, no fusion, no vector write;
- bad input never stops the batch: it becomes a dead letter with its reason.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence, TypeVar

import numpy as np
from qdrant_client import models

from encoders_onnx.decoding import MediaError, load_image
from encoders_onnx.fusion import MODALITIES, ModalityBatch
from encoders_onnx.session import l2_normalize
from streams.adapters.cache import FeatureCache, feature_key
from streams.adapters.media import MediaLimits, content_hash, fetch_bytes
from streams.adapters.store import (
    ProductStore,
    StoredState,
    category_prefixes,
    point_id,
)
from streams.schema.events import EventError, ProductEvent, event_from_dict, parse_event
from streams.settings import Settings
from streams.worker.encoders import Encoders, load_encoders

T = TypeVar("T")


@dataclass(frozen=True)
class IncomingMessage:
    """A raw Kafka record: the value stays as bytes so a dead letter carries the original."""

    value: bytes | None
    key: bytes | None = None
    topic: str = ""
    partition: int = -1
    offset: int = -1


@dataclass(frozen=True)
class DeadLetter:
    message: IncomingMessage
    reason: str


@dataclass
class BatchOutcome:
    indexed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    freshness_ms: list[float] = field(default_factory=list)

    def merge(self, other: "BatchOutcome") -> None:
        self.indexed += other.indexed
        self.deleted += other.deleted
        self.dead_letters += other.dead_letters
        self.counts.update(other.counts)
        self.freshness_ms += other.freshness_ms


class Stats:
    """Running counters and recent freshness samples, served by the worker's ``/stats``."""

    def __init__(self, window: int = 10_000) -> None:
        self.counts: Counter = Counter()
        self.freshness_ms: deque[float] = deque(maxlen=window)

    def add(self, outcome: BatchOutcome) -> None:
        self.counts.update(outcome.counts)
        self.freshness_ms.extend(outcome.freshness_ms)

    def snapshot(self) -> dict:
        samples = np.asarray(self.freshness_ms, dtype=np.float64)
        freshness = (
            {"freshness_p50_ms": float(np.percentile(samples, 50)), "freshness_p99_ms": float(np.percentile(samples, 99))}
            if samples.size else {"freshness_p50_ms": None, "freshness_p99_ms": None}
        )
        return {"counts": dict(self.counts), **freshness}


REINDEXED_FIELDS = ("product_id", "version", "title", "description", "attributes", "category", "price",
                    "currency", "image_uris", "video_uri", "event_time")


@dataclass(frozen=True)
class Media:
    """Fetched content with its sha256, computed once: the fingerprint and the cache keys use it."""

    uri: str
    data: bytes
    digest: str


@dataclass
class _Product:
    """An upsert on its way through the batch: its media, vectors, and why a modality failed."""

    event: ProductEvent
    message: IncomingMessage
    images: list[Media] = field(default_factory=list)  # those fetched
    video: Media | None = None
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    fingerprint: str = ""

    def fail(self, modality: str, uri: str, reason: str) -> None:
        """Note a modality's first failure (the payload and the dead letter carry it)."""
        self.errors.setdefault(modality, f"{uri}: {reason}")


class Pipeline:
    def __init__(self, settings: Settings, encoders: Encoders, cache: FeatureCache, store: ProductStore) -> None:
        self.settings = settings
        self.encoders = encoders
        self.cache = cache
        self.store = store
        self.image_limits = MediaLimits.for_images(settings)
        self.video_limits = MediaLimits.for_videos(settings)
        self._io = ThreadPoolExecutor(max_workers=8, thread_name_prefix="media")
        # read-decide-write of a batch and of a re-index page must not interleave, or an older
        # version could be written over a newer one between the check and the write
        self._apply = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> "Pipeline":
        """Load the models and connect to Redis and Qdrant as the settings say."""
        encoders = load_encoders(settings)
        cache = FeatureCache(settings.redis_url, settings.cache_ttl_s)
        return cls(settings, encoders, cache, ProductStore(settings, encoders.fusion.dims, encoders.store_version))

    def close(self) -> None:
        self._io.shutdown(wait=False)
        self.store.close()
        self.cache.close()

    # -- the batch -----------------------------------------------------------------------------

    def process(self, messages: Sequence[IncomingMessage]) -> BatchOutcome:
        outcome = BatchOutcome()
        latest = self._latest_per_product(messages, outcome)
        with self._apply:
            self._apply_latest(latest, outcome)
        outcome.counts["dead_lettered"] += len(outcome.dead_letters)
        return outcome

    def _apply_latest(self, latest: dict[str, tuple[ProductEvent, IncomingMessage]], outcome: BatchOutcome) -> None:
        current = self._current(list(latest))
        upserts: list[_Product] = []
        deletes: dict[str, ProductEvent] = {}
        for product_id, (event, message) in latest.items():
            known = current.get(product_id)
            if known is not None and event.version < known.version:
                outcome.counts["stale_skipped"] += 1
            elif known is not None and event.version == known.version and not (
                    event.op == "delete" and known.fingerprint is not None):  # a delete wins a tie with a live point
                outcome.counts["duplicates"] += 1
            elif event.op == "delete":
                deletes[product_id] = event
            else:
                upserts.append(_Product(event, message))

        if deletes:
            self.store.delete(list(deletes))
            self.cache.set_tombstones({pid: e.version for pid, e in deletes.items()})
            outcome.deleted.extend(deletes)
            outcome.counts["deleted"] += len(deletes)
        if upserts:
            self._upsert(upserts, current, outcome)
        now = time.time()
        outcome.freshness_ms.extend(
            (now - e.event_time) * 1000.0 for e in [*deletes.values(), *(p.event for p in upserts)]
        )

    def _upsert(self, upserts: list[_Product], current: dict[str, StoredState], outcome: BatchOutcome) -> None:
        """Unchanged content: rewrite the payload only. Changed: encode (cache first), fuse, write."""
        self._load_media(upserts)
        unchanged: list[_Product] = []
        changed: list[_Product] = []
        for product in upserts:
            stored = current.get(product.event.product_id)
            (unchanged if stored is not None and stored.fingerprint == product.fingerprint else changed).append(product)
        if unchanged:
            for product in unchanged:  # decode errors were found when the content was encoded: keep them
                product.errors = {**current[product.event.product_id].errors, **product.errors}
            self.store.overwrite_payloads(
                {p.event.product_id: self._payload(p, current[p.event.product_id].modalities) for p in unchanged}
            )
            outcome.counts["payload_only"] += len(unchanged)
        if changed:
            self._encode(changed, outcome)
            self._write(changed)
        self.cache.clear_tombstones(p.event.product_id for p in upserts)
        outcome.indexed.extend(p.event.product_id for p in upserts)
        outcome.counts["indexed"] += len(upserts)
        for product in upserts:
            for modality, reason in product.errors.items():
                outcome.dead_letters.append(DeadLetter(product.message, f"{modality}: {reason}"))

    def _latest_per_product(
        self, messages: Sequence[IncomingMessage], outcome: BatchOutcome
    ) -> dict[str, tuple[ProductEvent, IncomingMessage]]:
        """Parse every message; keep only the highest version of each product in this batch."""
        latest: dict[str, tuple[ProductEvent, IncomingMessage]] = {}
        for message in messages:
            try:
                event = parse_event(message.value)
            except EventError as exc:
                outcome.dead_letters.append(DeadLetter(message, f"invalid event: {exc}"))
                continue
            outcome.counts["events"] += 1
            seen = latest.get(event.product_id)
            if seen is None or event.version > seen[0].version:
                if seen is not None:
                    outcome.counts["stale_skipped"] += 1
                latest[event.product_id] = (event, message)
            elif event.version == seen[0].version:
                outcome.counts["duplicates"] += 1
            else:
                outcome.counts["stale_skipped"] += 1
        return latest

    def _current(self, product_ids: list[str]) -> dict[str, StoredState]:
        """What is stored or was deleted: a tombstone newer than the point wins."""
        current = self.store.states(product_ids)
        for product_id, version in self.cache.tombstones(product_ids).items():
            if product_id not in current or version > current[product_id].version:
                current[product_id] = StoredState(version)
        return current

    # -- re-indexing -----------------------------------------------------------------------------

    def reindex(self, source: str, progress: Callable[[int], None] = lambda done: None) -> Counter:
        """Re-embed every product of another model version's collection into this version's,
        from the cached raw features (re-encoding only what the cache lacks) and the media named
        in the payloads; a product this version already holds at the same or a newer version
        (written by a worker meanwhile) is left alone. The alias is not moved here."""
        outcome = BatchOutcome()
        done = 0
        for page in self.store.pages(source, with_vectors=False):
            events = [event_from_dict({**{k: r.payload.get(k) for k in REINDEXED_FIELDS}, "op": "upsert"})
                      for r in page if r.payload]
            with self._apply:
                current = self._current([e.product_id for e in events])  # tombstones included
                products = [_Product(e, IncomingMessage(None)) for e in events
                            if e.product_id not in current or current[e.product_id].version < e.version]
                outcome.counts["already_current"] += len(events) - len(products)
                if products:
                    self._load_media(products)
                    self._encode(products, outcome)
                    self._write(products)
                    outcome.counts["reindexed"] += len(products)
            done += len(page)
            progress(done)
        return outcome.counts

    # -- media and features --------------------------------------------------------------------

    def _load_media(self, products: list[_Product]) -> None:
        """Fetch every image and video of the batch (downloads in parallel, local files inline:
        a thread hand-off costs more than reading a small file), bounded by the media limits,
        then fingerprint each product's content."""
        wanted: list[tuple[_Product, str, MediaLimits]] = []
        for product in products:
            wanted += [(product, uri, self.image_limits) for uri in product.event.image_uris[: self.settings.max_images]]
            if product.event.video_uri:
                wanted.append((product, product.event.video_uri, self.video_limits))

        def fetch(item: tuple[_Product, str, MediaLimits]) -> tuple[bytes | None, str | None]:
            return _attempt(fetch_bytes, item[1], item[2])

        remote = [item for item in wanted if item[1].startswith(("http://", "https://"))]
        downloaded = dict(zip(map(id, remote), self._io.map(fetch, remote)))
        for item in wanted:
            product, uri, limits = item
            data, error = downloaded[id(item)] if id(item) in downloaded else fetch(item)
            modality = "video" if limits is self.video_limits else "image"
            if error is not None:
                product.fail(modality, uri, error)
            elif modality == "video":
                product.video = Media(uri, data, content_hash(data))
            else:
                product.images.append(Media(uri, data, content_hash(data)))
        for product in products:
            product.fingerprint = content_hash(json.dumps({
                "models": self.encoders.versions,
                "text": product.event.text,
                "images": [media.digest for media in product.images],
                "video": product.video.digest if product.video else None,
            }, sort_keys=True).encode())

    def _encode(self, products: list[_Product], outcome: BatchOutcome) -> None:
        texts = [p.event.text for p in products]
        text_vectors = self._cached("text", self.encoders.text.version, texts, [content_hash(t.encode()) for t in texts],
                                    self._encode_texts, outcome)
        for product, vector in zip(products, text_vectors):
            product.vectors["text"] = vector  # text never fails: a blank title is rejected earlier

        images = [(product, media) for product in products for media in product.images]
        image_vectors = self._cached("image", self.encoders.image.version, [m.data for _, m in images],
                                     [m.digest for _, m in images], self._encode_images, outcome)
        per_product: dict[str, list[np.ndarray]] = {}
        for (product, media), result in zip(images, image_vectors):
            if isinstance(result, str):
                product.fail("image", media.uri, result)
            else:
                per_product.setdefault(product.event.product_id, []).append(result)
        for product in products:
            found = per_product.get(product.event.product_id)
            if found:
                product.vectors["image"] = l2_normalize(np.mean(found, axis=0, keepdims=True))[0]

        videos = [p for p in products if p.video is not None]
        video_vectors = self._cached("video", self.encoders.video.version, [p.video.data for p in videos],
                                     [p.video.digest for p in videos], self._encode_videos, outcome)
        for product, result in zip(videos, video_vectors):
            if isinstance(result, str):
                product.fail("video", product.video.uri, result)
            else:
                product.vectors["video"] = result

    def _encode_texts(self, texts: list[str]) -> list[np.ndarray | str]:
        return list(self.encoders.text.encode(texts, batch_size=self.settings.batch_size))

    def _encode_images(self, payloads: list[bytes]) -> list[np.ndarray | str]:
        decoded = list(self._io.map(lambda data: _attempt(load_image, data, self.settings.max_image_pixels), payloads))
        good = [image for image, error in decoded if error is None]
        vectors = iter(self.encoders.image.encode(good, batch_size=self.settings.batch_size) if good else [])
        return [next(vectors) if error is None else error for _, error in decoded]

    def _encode_videos(self, payloads: list[bytes]) -> list[np.ndarray | str]:
        return [str(r) if isinstance(r, MediaError) else r.vector for r in self.encoders.video.encode_many(payloads)]

    def _cached(
        self,
        modality: str,
        model_version: str,
        inputs: list[T],
        digests: list[str],
        encode: Callable[[list[T]], list[np.ndarray | str]],
        outcome: BatchOutcome,
    ) -> list[np.ndarray | str]:
        """Vectors for ``inputs``: from Redis by content hash, encoding (once per distinct
        content, in one batch) only what is missing. A string result is an error reason."""
        keys = [feature_key(model_version, modality, digest) for digest in digests]
        results: list[np.ndarray | str | None] = list(self.cache.get_many(keys))
        missing: dict[str, int] = {}
        for i, (key, result) in enumerate(zip(keys, results)):
            if result is None:
                missing.setdefault(key, i)
        outcome.counts[f"cache_hits_{modality}"] += len(keys) - sum(r is None for r in results)
        outcome.counts[f"encoded_{modality}"] += len(missing)
        if missing:
            encoded = dict(zip(missing, encode([inputs[i] for i in missing.values()])))
            self.cache.put_many({k: v for k, v in encoded.items() if not isinstance(v, str)})
            results = [encoded[key] if result is None else result for key, result in zip(keys, results)]
        return results  # type: ignore[return-value]

    # -- storage -------------------------------------------------------------------------------

    def _write(self, products: list[_Product]) -> None:
        n = len(products)
        batch: dict[str, ModalityBatch] = {}
        encoder_dims = {"text": self.encoders.text.dim, "image": self.encoders.image.dim, "video": self.encoders.video.dim}
        for modality, dim in encoder_dims.items():
            vectors = np.zeros((n, dim), dtype=np.float32)
            present = np.zeros(n, dtype=bool)
            for i, product in enumerate(products):
                if modality in product.vectors:
                    vectors[i] = product.vectors[modality]
                    present[i] = True
            batch[modality] = ModalityBatch(vectors, present)
        named = self.encoders.fusion.fuse(batch)
        points = []
        for i, product in enumerate(products):
            vector = {name: b.vectors[i].tolist() for name, b in named.items() if b.present[i]}
            modalities = sorted(name for name in vector if name in MODALITIES)
            points.append(models.PointStruct(
                id=point_id(product.event.product_id), vector=vector, payload=self._payload(product, modalities),
            ))
        self.store.upsert(points)

    def _payload(self, product: _Product, modalities: list[str]) -> dict:
        event = product.event
        return {
            "product_id": event.product_id,
            "version": event.version,
            "title": event.title,
            "description": event.description,
            "attributes": event.attributes,
            "category": event.category,
            "category_path": category_prefixes(event.category),
            "price": event.price,
            "currency": event.currency,
            "image_uris": event.image_uris,
            "video_uri": event.video_uri,
            "event_time": event.event_time,
            "indexed_at": time.time(),
            "modalities": modalities,
            "errors": product.errors,
            "model_version": self.encoders.versions,
            "fingerprint": product.fingerprint,
        }


def _attempt(function: Callable[..., T], *args: object) -> tuple[T | None, str | None]:
    """Run a media step; a MediaError becomes its reason instead of an exception."""
    try:
        return function(*args), None
    except MediaError as exc:
        return None, str(exc)
