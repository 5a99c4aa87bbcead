"""Qdrant, owned here: one point per product with named vectors and a payload.

The same code talks to Qdrant local mode (a folder, the embedded default) and to a Qdrant
server or cluster (``SHELFSTREAM_QDRANT_URL``). Local mode admits one process per folder and is
not thread-safe, so every call goes through one lock.
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from qdrant_client import QdrantClient, models

from streams.settings import Settings

log = logging.getLogger(__name__)

# Point ids are UUIDv5 of the product id: stable across workers, replays and machines.
POINT_NAMESPACE = uuid.UUID("6f1d3c52-8a59-4c4e-9a8e-3b0c2f7d9e41")


def point_id(product_id: str) -> str:
    return str(uuid.uuid5(POINT_NAMESPACE, product_id))


def category_prefixes(category: Sequence[str]) -> list[str]:
    """``["A", "B"]`` -> ``["A", "A > B"]``: a filter on any level is then one keyword match."""
    return [" > ".join(category[: i + 1]) for i in range(len(category))]


@dataclass(frozen=True)
class SearchFilters:
    category: str | None = None  # a category path prefix, e.g. "Apparel > Topwear"
    price_min: float | None = None
    price_max: float | None = None

    def to_qdrant(self, exclude_product_id: str | None = None) -> models.Filter | None:
        must: list[models.Condition] = []
        if self.category:
            path = " > ".join(part.strip() for part in self.category.replace("/", ">").split(">") if part.strip())
            must.append(models.FieldCondition(key="category_path", match=models.MatchValue(value=path)))
        if self.price_min is not None or self.price_max is not None:
            must.append(models.FieldCondition(key="price", range=models.Range(gte=self.price_min, lte=self.price_max)))
        must_not: list[models.Condition] = []
        if exclude_product_id is not None:
            must_not.append(models.HasIdCondition(has_id=[point_id(exclude_product_id)]))
        return models.Filter(must=must or None, must_not=must_not or None) if (must or must_not) else None


@dataclass(frozen=True)
class StoredState:
    """What the pipeline needs to know of a stored product to order and skip work."""

    version: int
    fingerprint: str | None = None  # None: a tombstone, not a live point
    modalities: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    product_id: str
    score: float
    payload: dict[str, Any]


class ProductStore:
    """Writes go to the collection of this model version (``<alias>-<version>``); queries go to the
    alias, which ``switch_alias`` moves once a new version is complete (``shelfstream reindex``).
    So vectors of two model versions never mix, and old vectors answer until the switch."""

    def __init__(self, settings: Settings, dims: Mapping[str, int], version: str = "") -> None:
        self.alias = settings.collection
        self.collection = f"{self.alias}-{re.sub(r'[^A-Za-z0-9_.-]', '_', version)}" if version else self.alias
        self.dims = dict(dims)
        self._lock = threading.Lock()
        self.is_server = bool(settings.qdrant_url)
        if settings.qdrant_url:
            self.client = QdrantClient(url=settings.qdrant_url, api_key=settings.qdrant_api_key or None, timeout=30)
        else:
            self.client = QdrantClient(path=settings.qdrant_path)
        self.ensure_collection()
        self._tune_local_mode()
        if self.alias != self.collection and self.serving_collection() is None:
            self.switch_alias()  # the first version serves as soon as it exists

    def ensure_collection(self) -> None:
        """Create the collection, or check that an existing one has this model's vector sizes."""
        with self._lock:
            if not self.client.collection_exists(self.collection):
                self.client.create_collection(
                    self.collection,
                    vectors_config={
                        name: models.VectorParams(size=size, distance=models.Distance.COSINE)
                        for name, size in self.dims.items()
                    },
                )
                if self.is_server:  # local mode has no payload indexes (it warns)
                    for field, schema in (("category_path", models.PayloadSchemaType.KEYWORD),
                                          ("price", models.PayloadSchemaType.FLOAT),
                                          ("product_id", models.PayloadSchemaType.KEYWORD)):
                        self.client.create_payload_index(self.collection, field, schema)
                return
            vectors = self.client.get_collection(self.collection).config.params.vectors
            existing = ({name: params.size for name, params in vectors.items()} if isinstance(vectors, dict)
                        else {"(unnamed)": vectors.size} if vectors is not None else {})
        if existing != self.dims:
            self.client.close()
            raise RuntimeError(
                f"Qdrant collection {self.collection!r} has vectors {existing}, but the models produce "
                f"{self.dims}: use another SHELFSTREAM_COLLECTION or re-index into a new collection"
            )

    def _tune_local_mode(self) -> None:
        """Local mode commits SQLite once per point with a full fsync (~13 ms each): in WAL mode
        with ``synchronous=NORMAL`` a commit survives a crash of the process (not of the OS) at
        a fraction of the cost. A Qdrant server is untouched."""
        if self.is_server:
            return
        local = getattr(self.client, "_client", None)
        tuned = 0
        for collection in getattr(local, "collections", {}).values():
            persistence = getattr(collection, "storage", None)
            if persistence is not None:
                persistence.storage.execute("PRAGMA journal_mode=WAL")
                persistence.storage.execute("PRAGMA synchronous=NORMAL")
                tuned += 1
        if not tuned:
            log.warning("could not tune Qdrant local mode's SQLite (qdrant-client internals changed); writes stay slow")

    def serving_collection(self) -> str | None:
        """The collection the alias points at (None before any)."""
        with self._lock:
            aliases = self.client.get_aliases().aliases
        return next((a.collection_name for a in aliases if a.alias_name == self.alias), None)

    def switch_alias(self) -> None:
        """Point the alias (what queries read) at this version's collection, in one operation."""
        operations: list[Any] = [models.CreateAliasOperation(
            create_alias=models.CreateAlias(collection_name=self.collection, alias_name=self.alias))]
        if self.serving_collection() is not None:
            operations.insert(0, models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=self.alias)))
        with self._lock:
            self.client.update_collection_aliases(change_aliases_operations=operations)

    def states(self, product_ids: Sequence[str]) -> dict[str, StoredState]:
        """Version, content fingerprint and modalities of each product that has a point."""
        if not product_ids:
            return {}
        with self._lock:
            records = self.client.retrieve(
                self.collection, [point_id(pid) for pid in product_ids],
                with_payload=["product_id", "version", "fingerprint", "modalities", "errors"],
            )
        return {
            r.payload["product_id"]: StoredState(int(r.payload["version"]), r.payload.get("fingerprint"),
                                                 list(r.payload.get("modalities", [])), dict(r.payload.get("errors") or {}))
            for r in records if r.payload
        }

    def overwrite_payloads(self, payloads: Mapping[str, dict[str, Any]]) -> None:
        """Replace the payload of points whose vectors stay as they are (e.g. a price change)."""
        if payloads:
            operations = [
                models.OverwritePayloadOperation(overwrite_payload=models.SetPayload(payload=payload, points=[point_id(pid)]))
                for pid, payload in payloads.items()
            ]
            with self._lock:
                self.client.batch_update_points(self.collection, operations, wait=True)

    def upsert(self, points: Sequence[models.PointStruct]) -> None:
        if points:
            with self._lock:
                self.client.upsert(self.collection, list(points), wait=True)

    def delete(self, product_ids: Sequence[str]) -> None:
        if product_ids:
            with self._lock:
                self.client.delete(
                    self.collection,
                    points_selector=models.PointIdsList(points=[point_id(pid) for pid in product_ids]),
                    wait=True,
                )

    def get(self, product_id: str, with_vectors: bool = False, collection: str | None = None) -> models.Record | None:
        """A product as this version stored it (``collection=store.alias``: as queries see it)."""
        with self._lock:
            records = self.client.retrieve(collection or self.collection, [point_id(product_id)], with_vectors=with_vectors)
        return records[0] if records else None

    def vector(self, product_id: str, name: str, collection: str | None = None) -> np.ndarray | None:
        record = self.get(product_id, with_vectors=True, collection=collection)
        if record is None or not isinstance(record.vector, dict) or name not in record.vector:
            return None
        return np.asarray(record.vector[name], dtype=np.float32)

    def vectors(self, product_ids: Sequence[str], names: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
        """Named vectors of the products that queries see (the alias); absent products are left out."""
        if not product_ids:
            return {}
        with self._lock:
            records = self.client.retrieve(
                self.alias, [point_id(pid) for pid in product_ids], with_payload=["product_id"], with_vectors=list(names)
            )
        return {
            r.payload["product_id"]: {n: np.asarray(v, dtype=np.float32) for n, v in r.vector.items() if n in names}
            for r in records if r.payload and isinstance(r.vector, dict)
        }

    def search(
        self,
        using: str,
        vector: np.ndarray,
        limit: int = 10,
        filters: SearchFilters | None = None,
        exclude_product_id: str | None = None,
    ) -> list[Hit]:
        query_filter = (filters or SearchFilters()).to_qdrant(exclude_product_id)
        with self._lock:
            response = self.client.query_points(
                self.alias, query=vector.tolist(), using=using, limit=limit,
                query_filter=query_filter, with_payload=True,
            )
        return [Hit(p.payload["product_id"], float(p.score), dict(p.payload)) for p in response.points if p.payload]

    def count(self) -> int:
        return self.point_count(self.collection)

    def all_points(self, with_vectors: bool = True, collection: str | None = None) -> list[models.Record]:
        """Every point of this version's collection (or another one)."""
        return [record for page in self.pages(collection, with_vectors=with_vectors) for record in page]

    def pages(self, collection: str | None = None, page: int = 256, with_vectors: bool = True) -> Iterator[list[models.Record]]:
        """A collection's points, a page at a time (re-indexing reads the old version this way)."""
        offset = None
        while True:
            with self._lock:
                records, offset = self.client.scroll(
                    collection or self.collection, limit=page, offset=offset, with_vectors=with_vectors, with_payload=True
                )
            yield records
            if offset is None:
                return

    def point_count(self, collection: str) -> int:
        with self._lock:
            return self.client.count(collection, exact=True).count

    def close(self) -> None:
        with self._lock:
            self.client.close()
