"""Qdrant Edge, the embedded engine: the Qdrant engine in this process, one shard per collection.

Layout under the store folder (``SHELFSTREAM_QDRANT_PATH``, default STATE_DIR/qdrant)::

    <collection>/        an Edge shard (segments, WAL, edge_config.json) per model version
    aliases.json         {alias: collection}, replaced atomically (write, fsync, rename)

So a reader sees the old alias or the new one, never half a file, and a crash during a switch
leaves the old one. Only this module imports ``qdrant_edge`` (beta; the version is pinned).

Durability: every update goes through the shard's WAL before ``update`` returns, so a crash of
the process (kill -9) loses nothing that ``upsert`` returned for; measured without ``flush()``
(an OS crash is a server's job: see README). The WAL grows with every write until a ``flush()``
persists the segments. A flush holds the GIL for as long as it writes (~0.3-0.8 s for 2-3k new
points; flushing more often costs more in all: each flush rewrites the appendable segment), so
the worker flushes when its stream is idle (``ProductStore.flush``), and ``upsert`` flushes
itself only once ``FLUSH_EVERY_POINTS`` points are unflushed, under a load that never pauses.

Payloads: Edge converts a Python payload value by value (2-4 us each: bools are cheap, strings
dear), which made a product's ~60 values 0.22 ms, more than the rest of its upsert. So only
``NATIVE_FIELDS`` (what filters, payload indexes, price updates and the pipeline's state reads
touch) are stored as fields; the rest travels as one JSON string (``packed_payload``), and every
read unpacks it. The qdrant-client engine writes plain payloads and reads packed ones too, so an
Edge snapshot restored on a server reads the same.

Speed: ``fused`` (what similar items and the default query read) gets int8 scalar quantization,
built by ``optimize()``; no vector gets an HNSW graph. ``optimize()`` holds the GIL for its whole
run (measured: a 10 ms ticker thread waited out the whole run), so it runs at a bounded moment, never on
the stream's path: see ``ProductStore.optimize`` and README, Scale.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import qdrant_edge as qe

from streams.adapters.store.engine import EnginePoint
from streams.adapters.store.model import (
    FLOAT_INDEXES,
    KEYWORD_INDEXES,
    KEYWORDS,
    NATIVE_FIELDS,
    Conditions,
    Nearest,
    Query,
    Recommend,
    SparseVector,
    StoredPoint,
    check_dims,
    only_keys,
    packed_payload,
    stored_keys,
    unpacked_payload,
)

ALIASES = "aliases.json"
QUANTIZED_VECTOR = "fused"
# int8 candidates, twice as many as asked for, re-ranked on the float vectors (ignored where a
# segment has no quantized copy yet)
RESCORED = qe.SearchParams(quantization=qe.QuantizationSearchParams(rescore=True, oversampling=2.0))
FLUSH_EVERY_POINTS = 8192  # bounds the WAL (~20 KB a point before a flush) to ~160 MB


def _vector(vector: np.ndarray | SparseVector) -> Any:
    if isinstance(vector, SparseVector):
        return qe.SparseVector(list(vector.indices), list(vector.values))
    return np.asarray(vector, dtype=np.float32).tolist()


def _filter(conditions: Conditions) -> qe.Filter | None:
    if not conditions:
        return None
    must: list[Any] = [
        qe.FieldCondition(key, match=qe.MatchAny(list(values)) if len(values) > 1 else qe.MatchValue(values[0]))
        for key, values in conditions.match
    ]
    must.extend(qe.FieldCondition(key, range=qe.RangeFloat(gte=low, lte=high)) for key, low, high in conditions.ranges)
    must_not = [qe.HasIdCondition(set(conditions.exclude_ids))] if conditions.exclude_ids else None
    return qe.Filter(must=must or None, must_not=must_not)


def _stored(record: Any) -> StoredPoint:
    payload = unpacked_payload(record.payload)
    vectors = record.vector if isinstance(record.vector, dict) else {}
    return StoredPoint(payload.get("product_id", ""), payload, {name: list(v) for name, v in vectors.items()})


class EdgeEngine:
    def __init__(self, path: str) -> None:
        self.root = Path(path)
        self.root.mkdir(parents=True, exist_ok=True)
        self._shards: dict[str, qe.EdgeShard] = {}
        self._lock = threading.Lock()  # opening shards and switching aliases
        self._unflushed: dict[str, int] = {}  # points written per collection since its last flush

    # -- collections and aliases ---------------------------------------------------------------

    def _config(self, dims: Mapping[str, int]) -> qe.EdgeConfig:
        """Exact search everywhere (m=0: no HNSW graph), on int8 copies of ``fused`` once
        ``optimize()`` has quantized them (rescored with the float vectors): at 44k a quantized
        scan is a few ms, and quantizing takes seconds where an HNSW build took over 15 min on
        2 cores. Text and image are read less often and stay float: see README, Scale."""
        def params(name: str, size: int) -> qe.EdgeVectorParams:
            quantized = name == QUANTIZED_VECTOR
            return qe.EdgeVectorParams(
                size=size, distance=qe.Distance.Cosine,
                hnsw_config=qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000),
                quantization_config=qe.ScalarQuantizationConfig(qe.ScalarType.Int8, quantile=0.99, always_ram=True)
                if quantized else None)

        return qe.EdgeConfig(
            vectors={name: params(name, size) for name, size in dims.items()},
            sparse_vectors={KEYWORDS: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
        )

    def ensure_collection(self, collection: str, dims: Mapping[str, int]) -> None:
        path = self.root / collection
        with self._lock:
            if collection in self._shards:
                existing = self._dims(path)
            elif (path / "edge_config.json").exists():
                existing = self._dims(path)
                if existing == dict(dims):
                    self._shards[collection] = qe.EdgeShard.load(str(path))
            else:
                shard = qe.EdgeShard.create(str(path), self._config(dims))
                for key in KEYWORD_INDEXES:
                    shard.update(qe.UpdateOperation.create_field_index(key, qe.PayloadSchemaType.Keyword))
                for key in FLOAT_INDEXES:
                    shard.update(qe.UpdateOperation.create_field_index(key, qe.PayloadSchemaType.Float))
                self._shards[collection] = shard
                return
        check_dims(collection, existing, dims)

    @staticmethod
    def _dims(path: Path) -> dict[str, int]:
        config = json.loads((path / "edge_config.json").read_text())
        return {name: int(params["size"]) for name, params in (config.get("vectors") or {}).items()}

    def _shard(self, collection: str) -> qe.EdgeShard:
        shard = self._shards.get(collection)
        if shard is None:
            with self._lock:
                if collection not in self._shards:
                    if not (self.root / collection / "edge_config.json").exists():
                        raise LookupError(f"no Qdrant Edge collection {collection!r} under {self.root}")
                    self._shards[collection] = qe.EdgeShard.load(str(self.root / collection))
                shard = self._shards[collection]
        return shard

    def _aliases(self) -> dict[str, str]:
        try:
            return json.loads((self.root / ALIASES).read_text())
        except FileNotFoundError:
            return {}

    def serving_collection(self, alias: str) -> str | None:
        return self._aliases().get(alias)

    def switch_alias(self, alias: str, collection: str) -> None:
        with self._lock:
            aliases = {**self._aliases(), alias: collection}
            tmp = self.root / f".{ALIASES}.tmp"
            with open(tmp, "w") as out:
                json.dump(aliases, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.root / ALIASES)
            directory = os.open(self.root, os.O_RDONLY)
            try:
                os.fsync(directory)  # the rename itself survives a crash
            finally:
                os.close(directory)

    # -- writes ---------------------------------------------------------------------------------

    def upsert(self, collection: str, points: Sequence[EnginePoint]) -> None:
        shard = self._shard(collection)
        shard.update(qe.UpdateOperation.upsert_points([
            qe.Point(p.id, {**{n: _vector(v) for n, v in p.dense.items()}, **{n: _vector(v) for n, v in p.sparse.items()}},
                     packed_payload(p.payload))
            for p in points
        ]))
        self._unflushed[collection] = self._unflushed.get(collection, 0) + len(points)
        if self._unflushed[collection] >= FLUSH_EVERY_POINTS:
            shard.flush()  # persists the segments, so the WAL before it can be dropped
            self._unflushed[collection] = 0

    def overwrite_payloads(self, collection: str, payloads: Mapping[str, dict[str, Any]]) -> None:
        self._payload_updates(collection, {pid: packed_payload(payload) for pid, payload in payloads.items()},
                              qe.UpdateOperation.overwrite_payload)

    def set_payloads(self, collection: str, payloads: Mapping[str, dict[str, Any]]) -> None:
        """Only ``NATIVE_FIELDS``: a packed field would need the stored pack read and rewritten."""
        packed = sorted({key for payload in payloads.values() for key in payload} - NATIVE_FIELDS)
        if packed:
            raise ValueError(f"set_payloads takes only fields stored natively ({sorted(NATIVE_FIELDS)}), not {packed}")
        self._payload_updates(collection, payloads, qe.UpdateOperation.set_payload)

    def _payload_updates(self, collection: str, payloads: Mapping[str, dict[str, Any]], operation: Any) -> None:
        """One update per point: each has its own payload (Edge has no batch of payload updates)."""
        shard = self._shard(collection)
        for pid, payload in payloads.items():
            shard.update(operation([pid], payload))

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        self._shard(collection).update(qe.UpdateOperation.delete_points(list(ids)))

    # -- reads ----------------------------------------------------------------------------------

    def retrieve(self, collection: str, ids: Sequence[str], payload: bool | Sequence[str],
                 vectors: Sequence[str]) -> list[StoredPoint]:
        selector = payload if isinstance(payload, bool) else qe.PayloadSelector.Include(stored_keys(payload))
        records = self._shard(collection).retrieve(list(ids), with_payload=selector, with_vector=list(vectors) or False)
        stored = [_stored(r) for r in records]
        return stored if isinstance(payload, bool) else [only_keys(point, payload) for point in stored]

    def query(self, collection: str, query: Query, limit: int, offset: int, conditions: Conditions,
              score_threshold: float | None) -> list[tuple[float, dict[str, Any]]]:
        if isinstance(query, Nearest):
            scoring = qe.Query.Nearest(_vector(query.vector), using=query.using)
        elif isinstance(query, Recommend):
            scoring = qe.Query.RecommendBestScore(
                qe.RecommendQuery([_vector(v) for v in query.positives], [_vector(v) for v in query.negatives]),
                using=query.using)
        else:
            raise TypeError(f"unknown query {query!r}")
        points = self._shard(collection).query(qe.QueryRequest(
            limit=limit, offset=offset, query=scoring, filter=_filter(conditions),
            score_threshold=score_threshold, with_payload=True, params=RESCORED,
        ))
        return [(float(p.score), unpacked_payload(p.payload)) for p in points]

    def scroll(self, collection: str, limit: int, offset: Any, vectors: Sequence[str]) -> tuple[list[StoredPoint], Any]:
        records, next_offset = self._shard(collection).scroll(qe.ScrollRequest(
            offset=offset, limit=limit, with_payload=True, with_vector=list(vectors) or False))
        return [_stored(r) for r in records], next_offset

    def count(self, collection: str) -> int:
        return self._shard(collection).count(qe.CountRequest(exact=True))

    # -- backups --------------------------------------------------------------------------------

    def backup(self, collections: Sequence[str], target: Path) -> list[Path]:
        """Flush each shard, then pack its folder (segments and WAL) into ``<collection>.snapshot``.
        The caller holds the store's lock, so no write lands halfway."""
        files = []
        for collection in collections:
            self._shard(collection).flush()
            file = target / f"{collection}.snapshot"
            with tarfile.open(file, "w") as tar:
                for part in ("edge_config.json", "segments", "wal"):
                    if (self.root / collection / part).exists():
                        tar.add(self.root / collection / part, arcname=part)
            files.append(file)
        return files

    def restore(self, snapshots: Mapping[str, Path]) -> None:
        for collection, file in snapshots.items():
            with self._lock:
                shard = self._shards.pop(collection, None)
                if shard is not None:
                    shard.close()
                path = self.root / collection
                shutil.rmtree(path, ignore_errors=True)
                path.mkdir(parents=True)
                with tarfile.open(file) as tar:
                    tar.extractall(path, filter="data")
                self._shards[collection] = qe.EdgeShard.load(str(path))

    def optimize(self, collection: str) -> bool:
        return self._shard(collection).optimize()

    def flush(self, collection: str) -> int:
        unflushed = self._unflushed.get(collection, 0)
        if unflushed:
            self._shard(collection).flush()
            self._unflushed[collection] = 0
        return unflushed

    def close(self) -> None:
        with self._lock:
            for shard in self._shards.values():
                shard.close()
            self._shards.clear()
