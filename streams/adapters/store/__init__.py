"""The product store: one point per product with named dense vectors, a sparse ``keywords``
vector and a payload, on one of two engines chosen once from settings:

- Qdrant Edge (``edge.py``), the embedded default: the Qdrant engine in this process, a shard
  folder per model version under ``SHELFSTREAM_QDRANT_PATH``;
- a Qdrant server or cluster through qdrant-client (``client.py``) when ``SHELFSTREAM_QDRANT_URL``
  is set (``local:PATH``: qdrant-client's local mode, the server API's stand-in in tests).

Callers never ask which engine they are on. Writes go to the collection of this model version
(``<alias>-<version>``); queries read the alias, which ``switch_alias`` moves once a new version
is complete (``shelfstream reindex``): vectors of two model versions never mix, and old vectors
answer until the switch. Every call goes through one lock (local mode is not thread-safe, and
Edge gains nothing from concurrent calls that hold the GIL).
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from streams.adapters.store.engine import Engine
from streams.adapters.store.model import (
    KEYWORD_FIELDS,
    KEYWORDS,
    PAYLOAD_DIGEST,
    POINT_NAMESPACE,
    STATE_FIELDS,
    VOLATILE_FIELDS,
    Conditions,
    Hit,
    KeywordField,
    Nearest,
    ProductPoint,
    Query,
    Recommend,
    SearchFilters,
    SparseVector,
    StoredPoint,
    StoredState,
    category_prefixes,
    keyword_document,
    keyword_query,
    payload_digest,
    point_id,
    with_derived_fields,
    without_derived_fields,
)
from streams.settings import Settings

__all__ = [
    "EXCLUDED_BY_OVERFETCH", "KEYWORD_FIELDS", "POINT_NAMESPACE", "Hit", "KeywordField", "ProductPoint", "ProductStore", "SearchFilters", "StoredPoint", "StoredState",
    "category_prefixes", "open_engine", "point_id",
]
MANIFEST = "manifest.json"
EXCLUDED_BY_OVERFETCH = 16  # up to this many excluded products are dropped from a longer list (see _query)


@dataclass(frozen=True)
class _EnginePoint:
    id: str
    dense: dict[str, np.ndarray]
    sparse: dict[str, SparseVector]
    payload: dict[str, Any]


def open_engine(settings: Settings) -> Engine:
    """The engine the settings select: a Qdrant server by URL (or ``local:PATH``), else Edge."""
    if settings.qdrant_url:
        from streams.adapters.store.client import ClientEngine
        return ClientEngine(settings.qdrant_url, settings.qdrant_api_key)
    from streams.adapters.store.edge import EdgeEngine
    return EdgeEngine(settings.qdrant_path)


class ProductStore:
    def __init__(self, settings: Settings, dims: Mapping[str, int], version: str = "") -> None:
        self.alias = settings.collection
        self.collection = f"{self.alias}-{re.sub(r'[^A-Za-z0-9_.-]', '_', version)}" if version else self.alias
        self.dims = dict(dims)
        self._lock = threading.Lock()
        self._engine = open_engine(settings)
        try:
            self._engine.ensure_collection(self.collection, self.dims)
        except Exception:
            self._engine.close()
            raise
        if self.alias != self.collection and self.serving_collection() is None:
            self.switch_alias()  # the first version serves as soon as it exists

    # -- versions ----------------------------------------------------------------------------------

    def serving_collection(self) -> str | None:
        """The collection the alias points at (None before any)."""
        with self._lock:
            return self._engine.serving_collection(self.alias)

    def switch_alias(self) -> None:
        """Point the alias (what queries read) at this version's collection, in one operation."""
        with self._lock:
            self._engine.switch_alias(self.alias, self.collection)

    def _resolve(self, collection: str | None) -> str:
        """A collection name for reads: the alias means the collection it points at."""
        if collection is None:
            return self.collection
        if collection == self.alias:
            with self._lock:
                return self._engine.serving_collection(self.alias) or self.alias
        return collection

    # -- writes ------------------------------------------------------------------------------------

    def upsert(self, points: Sequence[ProductPoint]) -> None:
        """Write products (replacing them whole); durable when this returns."""
        if not points:
            return
        engine_points = []
        for p in points:
            sparse = keyword_document(p.payload)
            engine_points.append(_EnginePoint(point_id(p.product_id), dict(p.vectors),
                                              {KEYWORDS: sparse} if sparse else {}, with_derived_fields(p.payload)))
        with self._lock:
            self._engine.upsert(self.collection, engine_points)

    def overwrite_payloads(self, payloads: Mapping[str, dict[str, Any]], stored: Mapping[str, StoredState] | None = None) -> None:
        """Replace the payload of points whose vectors stay as they are (e.g. a price change).
        Where the stored digest shows that only ``VOLATILE_FIELDS`` changed, only those are sent:
        an engine takes a whole payload slowly (Edge: ~0.17 ms, most of a price update's cost).
        ``stored``: the products' states as just read by ``states``, whose digests spare a
        second read (the caller is the products' only writer between the two)."""
        if not payloads:
            return
        new_digests = {pid: payload_digest(payload) for pid, payload in payloads.items()}
        with self._lock:
            digests = {pid: stored[pid].payload_digest for pid in new_digests if stored and pid in stored}
            unknown = [pid for pid in new_digests if pid not in digests]
            if unknown:
                records = self._engine.retrieve(self.collection, [point_id(pid) for pid in unknown], ["product_id", PAYLOAD_DIGEST], ())
                digests.update({r.product_id: r.payload.get(PAYLOAD_DIGEST) for r in records if r.product_id in new_digests})
            steady = {pid for pid, digest in digests.items() if digest == new_digests[pid]}
            self._engine.set_payloads(self.collection, {
                point_id(pid): {k: payloads[pid][k] for k in VOLATILE_FIELDS if k in payloads[pid]} for pid in steady})
            self._engine.overwrite_payloads(self.collection, {
                point_id(pid): with_derived_fields(payload) for pid, payload in payloads.items() if pid not in steady})

    def delete(self, product_ids: Sequence[str]) -> None:
        if product_ids:
            with self._lock:
                self._engine.delete(self.collection, [point_id(pid) for pid in product_ids])

    # -- reads by id --------------------------------------------------------------------------------

    def states(self, product_ids: Sequence[str]) -> dict[str, StoredState]:
        """Version, content fingerprint and modalities of each product that has a point."""
        if not product_ids:
            return {}
        with self._lock:
            records = self._engine.retrieve(self.collection, [point_id(pid) for pid in product_ids],
                                            STATE_FIELDS, ())
        return {
            r.payload["product_id"]: StoredState(int(r.payload["version"]), r.payload.get("fingerprint"),
                                                 list(r.payload.get("modalities", [])), dict(r.payload.get("errors") or {}),
                                                 r.payload.get(PAYLOAD_DIGEST))
            for r in records if r.payload
        }

    def get(self, product_id: str, with_vectors: bool = False, collection: str | None = None) -> StoredPoint | None:
        """A product as this version stored it (``collection=store.alias``: as queries see it)."""
        target = self._resolve(collection)
        with self._lock:
            records = self._engine.retrieve(target, [point_id(product_id)], True, list(self.dims) if with_vectors else ())
        return self._public(records[0]) if records else None

    def vector(self, product_id: str, name: str, collection: str | None = None) -> np.ndarray | None:
        record = self.get(product_id, with_vectors=True, collection=collection)
        if record is None or name not in record.vector:
            return None
        return np.asarray(record.vector[name], dtype=np.float32)

    def vectors(self, product_ids: Sequence[str], names: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
        """Named vectors of products as queries see them (the alias); absent products are left out."""
        if not product_ids:
            return {}
        target = self._resolve(self.alias)
        with self._lock:
            records = self._engine.retrieve(target, [point_id(pid) for pid in product_ids], ["product_id"], list(names))
        return {r.product_id: {n: np.asarray(v, dtype=np.float32) for n, v in r.vector.items()} for r in records}

    # -- queries (all read the alias) ------------------------------------------------------------------

    def search(self, using: str, vector: np.ndarray, limit: int = 10, filters: SearchFilters | None = None,
               offset: int = 0, score_threshold: float | None = None) -> list[Hit]:
        """Cosine on one named vector."""
        return self._query(Nearest(using, vector), limit, filters, offset, score_threshold)

    def keyword_search(self, text: str, limit: int = 10, filters: SearchFilters | None = None, offset: int = 0,
                       fields: Sequence[KeywordField] = KEYWORD_FIELDS) -> list[Hit]:
        """BM25-style over the keyword fields asked (free text, structured values); the engine applies IDF."""
        query = keyword_query(text, fields)
        return self._query(Nearest(KEYWORDS, query), limit, filters, offset, None) if query else []

    def recommend(self, positive_ids: Sequence[str], negative_ids: Sequence[str] = (), using: str = "fused",
                  limit: int = 10, filters: SearchFilters | None = None, offset: int = 0,
                  score_threshold: float | None = None) -> list[Hit]:
        """Products near any positive and away from the negatives (best score); the inputs are
        never in the results. A product without that vector is a LookupError naming it."""
        if not positive_ids:
            raise ValueError("recommend needs at least one positive product id")
        inputs = [*positive_ids, *negative_ids]
        found = self.vectors(inputs, [using])
        missing = [pid for pid in inputs if using not in found.get(pid, {})]
        if missing:
            raise LookupError(f"products without a {using!r} vector in {self.alias!r}: {', '.join(map(repr, missing))}")
        query: Query = Recommend(using, tuple(found[p][using] for p in positive_ids), tuple(found[n][using] for n in negative_ids))
        if len(positive_ids) == 1 and not negative_ids:
            # best score of one positive is its cosine: the plain nearest query ranks and scores
            # the same, and it reads the int8 copies (measured at 44k: recommend over HTTP p95 24-30 ms)
            query = Nearest(using, found[positive_ids[0]][using])
        return self._query(query, limit, filters, offset, score_threshold, exclude=inputs)

    def _query(self, query: Query, limit: int, filters: SearchFilters | None, offset: int,
               score_threshold: float | None, exclude: Sequence[str] = ()) -> list[Hit]:
        """A few excluded products (a similar-item query's own id) are dropped from a list that
        much longer rather than filtered: an id filter turns the engine's search into a filtered
        one (measured at 44k on Edge: a similar-item query 7.3 -> 6.4 ms p50)."""
        filters = filters or SearchFilters()
        dropped = set(filters.exclude_product_ids) | set(exclude)
        if len(dropped) > EXCLUDED_BY_OVERFETCH:
            dropped = set()  # many: the engine filters them
        else:
            filters, exclude = replace(filters, exclude_product_ids=()), ()
        conditions: Conditions = filters.conditions(exclude)
        fetch_limit, fetch_offset = (offset + limit + len(dropped), 0) if dropped else (limit, offset)
        target = self._resolve(self.alias)
        with self._lock:
            rows = self._engine.query(target, query, fetch_limit, fetch_offset, conditions, score_threshold)
        hits = [Hit(payload["product_id"], score, without_derived_fields(payload))
                for score, payload in rows if payload and payload["product_id"] not in dropped]
        return hits[offset:offset + limit] if dropped else hits

    # -- whole collections ----------------------------------------------------------------------------

    def count(self) -> int:
        return self.point_count(self.collection)

    def point_count(self, collection: str) -> int:
        target = self._resolve(collection)
        with self._lock:
            return self._engine.count(target)

    def all_points(self, with_vectors: bool = True, collection: str | None = None) -> list[StoredPoint]:
        """Every point of this version's collection (or another one)."""
        return [record for page in self.pages(collection, with_vectors=with_vectors) for record in page]

    def pages(self, collection: str | None = None, page: int = 256, with_vectors: bool = True) -> Iterator[list[StoredPoint]]:
        """A collection's points, a page at a time (re-indexing reads the old version this way)."""
        target = self._resolve(collection)
        offset = None
        while True:
            with self._lock:
                records, offset = self._engine.scroll(target, page, offset, list(self.dims) if with_vectors else ())
            yield [self._public(r) for r in records]
            if offset is None:
                return

    @staticmethod
    def _public(record: StoredPoint) -> StoredPoint:
        return StoredPoint(record.product_id, without_derived_fields(record.payload), record.vector)

    # -- maintenance ---------------------------------------------------------------------------------

    def optimize(self) -> bool:
        """Build the vector indexes of this version's collection now (Edge: int8 copies of
        ``fused``, ~3 s at 44k on 2 cores, holding the GIL all along: call it at a bounded moment,
        as re-indexing does before it switches the alias; a server builds its own in the background)."""
        with self._lock:
            return self._engine.optimize(self.collection)

    def flush(self) -> int:
        """Persist this version's collection now (Edge: the segments, so the WAL can be dropped;
        holds the GIL ~0.3-0.8 s for 2-3k new points): the worker calls it when its stream is
        idle. Durability never depends on it (the WAL already is). Returns the points flushed."""
        with self._lock:
            return self._engine.flush(self.collection)

    def backup(self, target: Path) -> list[Path]:
        """A snapshot of this version's collection and of the serving one, and a manifest naming
        the alias, under ``target``."""
        target.mkdir(parents=True, exist_ok=True)
        with self._lock:
            serving = self._engine.serving_collection(self.alias)
            collections = list(dict.fromkeys([self.collection, *([serving] if serving else [])]))
            files = self._engine.backup(collections, target)
        (target / MANIFEST).write_text(json.dumps({"alias": self.alias, "serving": serving, "collections": collections}))
        return files

    def restore(self, source: Path) -> list[str]:
        """Replace the collections of a backup (``backup``) and point the alias as it was then."""
        manifest = json.loads((source / MANIFEST).read_text())
        if manifest["alias"] != self.alias:
            raise ValueError(f"the backup in {source} is of alias {manifest['alias']!r}, this store serves {self.alias!r}")
        with self._lock:
            self._engine.restore({c: source / f"{c}.snapshot" for c in manifest["collections"]})
            if manifest["serving"]:
                self._engine.switch_alias(self.alias, manifest["serving"])
        return list(manifest["collections"])

    def close(self) -> None:
        with self._lock:
            self._engine.close()
