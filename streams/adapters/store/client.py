"""A Qdrant server or cluster through qdrant-client (``SHELFSTREAM_QDRANT_URL=http://...``).

``SHELFSTREAM_QDRANT_URL=local:PATH`` selects qdrant-client's local mode instead: the same client
API, exact search in Python. It stands in for the server in the store's contract tests (no Qdrant
server binary is installable here) and is the baseline of ``shelfstream bench --store``; it has
no payload indexes and no snapshots, and admits one process per folder. Only this module imports
``qdrant_client``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence
from urllib.request import Request, urlopen

import numpy as np
from qdrant_client import QdrantClient, models

from streams.adapters.store.engine import EnginePoint
from streams.adapters.store.model import (
    FLOAT_INDEXES,
    KEYWORD_INDEXES,
    KEYWORDS,
    Conditions,
    Nearest,
    Query,
    Recommend,
    SparseVector,
    StoredPoint,
    check_dims,
    only_keys,
    stored_keys,
    unpacked_payload,
)

log = logging.getLogger(__name__)
LOCAL_PREFIX = "local:"


def _vector(vector: np.ndarray | SparseVector) -> Any:
    if isinstance(vector, SparseVector):
        return models.SparseVector(indices=list(vector.indices), values=list(vector.values))
    return np.asarray(vector, dtype=np.float32).tolist()


def _filter(conditions: Conditions) -> models.Filter | None:
    if not conditions:
        return None
    must: list[models.Condition] = [
        models.FieldCondition(key=key, match=models.MatchAny(any=list(values)) if len(values) > 1
                              else models.MatchValue(value=values[0]))
        for key, values in conditions.match
    ]
    must.extend(models.FieldCondition(key=key, range=models.Range(gte=low, lte=high)) for key, low, high in conditions.ranges)
    must_not: list[models.Condition] = (
        [models.HasIdCondition(has_id=list(conditions.exclude_ids))] if conditions.exclude_ids else [])
    return models.Filter(must=must or None, must_not=must_not or None)


def _stored(record: models.Record) -> StoredPoint:
    payload = unpacked_payload(record.payload)
    vectors = record.vector if isinstance(record.vector, dict) else {}
    return StoredPoint(payload.get("product_id", ""), payload,
                       {name: list(v) for name, v in vectors.items() if isinstance(v, list)})


class ClientEngine:
    def __init__(self, url: str, api_key: str = "") -> None:
        self.url = url
        self.is_local = url.startswith(LOCAL_PREFIX)
        if self.is_local:
            self.client = QdrantClient(path=url[len(LOCAL_PREFIX):])
        else:
            self.client = QdrantClient(url=url, api_key=api_key or None, timeout=30)
        self.api_key = api_key

    def ensure_collection(self, collection: str, dims: Mapping[str, int]) -> None:
        if not self.client.collection_exists(collection):
            self.client.create_collection(
                collection,
                vectors_config={name: models.VectorParams(size=size, distance=models.Distance.COSINE)
                                for name, size in dims.items()},
                sparse_vectors_config={KEYWORDS: models.SparseVectorParams(modifier=models.Modifier.IDF)},
            )
            if not self.is_local:  # local mode has no payload indexes (it would only warn)
                for key in KEYWORD_INDEXES:
                    self.client.create_payload_index(collection, key, models.PayloadSchemaType.KEYWORD)
                for key in FLOAT_INDEXES:
                    self.client.create_payload_index(collection, key, models.PayloadSchemaType.FLOAT)
            return
        vectors = self.client.get_collection(collection).config.params.vectors
        existing = ({name: params.size for name, params in vectors.items()} if isinstance(vectors, dict)
                    else {"(unnamed)": vectors.size} if vectors is not None else {})
        check_dims(collection, existing, dims)

    def serving_collection(self, alias: str) -> str | None:
        aliases = self.client.get_aliases().aliases
        return next((a.collection_name for a in aliases if a.alias_name == alias), None)

    def switch_alias(self, alias: str, collection: str) -> None:
        operations: list[Any] = [models.CreateAliasOperation(
            create_alias=models.CreateAlias(collection_name=collection, alias_name=alias))]
        if self.serving_collection(alias) is not None:
            operations.insert(0, models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
        self.client.update_collection_aliases(change_aliases_operations=operations)

    def upsert(self, collection: str, points: Sequence[EnginePoint]) -> None:
        self.client.upsert(collection, [
            models.PointStruct(id=p.id, payload=p.payload, vector={
                **{n: _vector(v) for n, v in p.dense.items()}, **{n: _vector(v) for n, v in p.sparse.items()}})
            for p in points
        ], wait=True)

    def overwrite_payloads(self, collection: str, payloads: Mapping[str, dict[str, Any]]) -> None:
        self._payload_updates(collection, payloads, lambda change: models.OverwritePayloadOperation(overwrite_payload=change))

    def set_payloads(self, collection: str, payloads: Mapping[str, dict[str, Any]]) -> None:
        self._payload_updates(collection, payloads, lambda change: models.SetPayloadOperation(set_payload=change))

    def _payload_updates(self, collection: str, payloads: Mapping[str, dict[str, Any]],
                         operation: Callable[[models.SetPayload], Any]) -> None:
        """One request for the whole batch, one operation per point (each has its own payload)."""
        if payloads:
            self.client.batch_update_points(collection, [
                operation(models.SetPayload(payload=payload, points=[pid])) for pid, payload in payloads.items()], wait=True)

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        self.client.delete(collection, points_selector=models.PointIdsList(points=list(ids)), wait=True)

    def retrieve(self, collection: str, ids: Sequence[str], payload: bool | Sequence[str],
                 vectors: Sequence[str]) -> list[StoredPoint]:
        records = self.client.retrieve(collection, list(ids), with_payload=payload if isinstance(payload, bool) else stored_keys(payload),
                                       with_vectors=list(vectors) or False)
        stored = [_stored(r) for r in records]
        return stored if isinstance(payload, bool) else [only_keys(point, payload) for point in stored]

    def query(self, collection: str, query: Query, limit: int, offset: int, conditions: Conditions,
              score_threshold: float | None) -> list[tuple[float, dict[str, Any]]]:
        if isinstance(query, Nearest):
            scoring: Any = _vector(query.vector)
        elif isinstance(query, Recommend):
            scoring = models.RecommendQuery(recommend=models.RecommendInput(
                positive=[_vector(v) for v in query.positives], negative=[_vector(v) for v in query.negatives],
                strategy=models.RecommendStrategy.BEST_SCORE))
        else:
            raise TypeError(f"unknown query {query!r}")
        response = self.client.query_points(
            collection, query=scoring, using=query.using, limit=limit, offset=offset,
            query_filter=_filter(conditions), score_threshold=score_threshold, with_payload=True,
        )
        return [(float(p.score), unpacked_payload(p.payload)) for p in response.points]

    def scroll(self, collection: str, limit: int, offset: Any, vectors: Sequence[str]) -> tuple[list[StoredPoint], Any]:
        records, next_offset = self.client.scroll(collection, limit=limit, offset=offset,
                                                  with_vectors=list(vectors) or False, with_payload=True)
        return [_stored(r) for r in records], next_offset

    def count(self, collection: str) -> int:
        return self.client.count(collection, exact=True).count

    def backup(self, collections: Sequence[str], target: Path) -> list[Path]:
        """Qdrant's snapshot API: create a snapshot per collection on the server, download it."""
        self._require_server("backup")
        files = []
        for collection in collections:
            snapshot = self.client.create_snapshot(collection, wait=True)
            file = target / f"{collection}.snapshot"
            request = Request(f"{self.url.rstrip('/')}/collections/{collection}/snapshots/{snapshot.name}",
                              headers={"api-key": self.api_key} if self.api_key else {})
            with urlopen(request, timeout=600) as response, open(file, "wb") as out:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
            files.append(file)
        return files

    def restore(self, snapshots: Mapping[str, Path]) -> None:
        """Upload each snapshot to the server (``/snapshots/upload``), replacing the collection."""
        self._require_server("restore")
        for collection, file in snapshots.items():
            boundary = "shelfstream-snapshot"
            body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"snapshot\"; filename=\"{file.name}\"\r\n"
                    "Content-Type: application/octet-stream\r\n\r\n").encode() + file.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
            headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
            if self.api_key:
                headers["api-key"] = self.api_key
            request = Request(f"{self.url.rstrip('/')}/collections/{collection}/snapshots/upload?priority=snapshot",
                              data=body, headers=headers, method="POST")
            with urlopen(request, timeout=600) as response:
                response.read()

    def _require_server(self, what: str) -> None:
        if self.is_local:
            raise RuntimeError(f"qdrant-client local mode has no snapshots: {what} needs Qdrant Edge or a Qdrant server")

    def optimize(self, collection: str) -> bool:
        return False  # a server builds its indexes in the background

    def flush(self, collection: str) -> int:
        return 0  # a server persists by itself

    def close(self) -> None:
        self.client.close()
