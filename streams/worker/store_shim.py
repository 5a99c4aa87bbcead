"""TEMPORARY: the agreed store interface (issue 9) over the current store, until branch h2 lands
``SearchFilters``, ``keyword_search``, ``recommend`` and ``vectors`` in ``streams/adapters/store.py``.
Exact and in Python over every point of the alias: fine for tests and the demo catalog only.
Delete this module when h2 is merged and import those names from the store."""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from qdrant_client import models

from streams.adapters.store import Hit, ProductStore, point_id

TOKEN = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class SearchFilters:
    category: str | None = None
    price_min: float | None = None
    price_max: float | None = None
    attributes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    modalities: tuple[str, ...] = ()
    exclude_product_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.price_min is not None and self.price_max is not None and self.price_min > self.price_max:
            raise ValueError(f"price_min ({self.price_min}) is greater than price_max ({self.price_max})")

    def matches(self, payload: Mapping[str, Any]) -> bool:
        if self.category:
            wanted = " > ".join(p.strip() for p in self.category.replace("/", ">").split(">") if p.strip()).lower()
            levels = [c.lower() for c in payload.get("category") or []]
            paths = [p.lower() for p in payload.get("category_path") or []]
            if wanted not in levels and wanted not in paths:
                return False
        price = payload.get("price")
        if self.price_min is not None and (price is None or price < self.price_min):
            return False
        if self.price_max is not None and (price is None or price > self.price_max):
            return False
        attributes = {k.lower(): str(v).lower() for k, v in (payload.get("attributes") or {}).items()}
        for key, values in self.attributes.items():
            if attributes.get(key.lower()) not in {v.lower() for v in values}:
                return False
        if not set(self.modalities) <= set(payload.get("modalities") or []):
            return False
        return payload.get("product_id") not in self.exclude_product_ids


def tokens(text: str) -> list[str]:
    return TOKEN.findall(text.lower())


class ShimStore:
    """The current store plus the methods of the agreed interface."""

    def __init__(self, store: ProductStore) -> None:
        self._store = store
        self._cached: list[Any] | None = None
        self._cached_documents: list[Counter] | None = None
        self._matrices: dict[str, tuple[list[Any], np.ndarray]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def _points(self) -> list[Any]:
        """Read once per shim (one per request in the API, one per index in the evaluation)."""
        if self._cached is None:
            self._cached = [r for r in self._store.all_points(with_vectors=True, collection=self._store.alias) if r.payload]
        return self._cached

    def _documents(self) -> list[Counter]:
        if self._cached_documents is None:
            self._cached_documents = [
                Counter(tokens(" ".join([r.payload.get("title", ""), r.payload.get("description", ""),
                                         *map(str, (r.payload.get("attributes") or {}).values())])))
                for r in self._points()
            ]
        return self._cached_documents

    def search(self, using: str, vector: np.ndarray, limit: int = 10, filters: SearchFilters | None = None,
               offset: int = 0, score_threshold: float | None = None) -> list[Hit]:
        if using not in self._matrices:
            having = [r for r in self._points() if (r.vector or {}).get(using) is not None]
            matrix = np.asarray([r.vector[using] for r in having], dtype=np.float32).reshape(len(having), -1)
            self._matrices[using] = (having, matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12))
        records, matrix = self._matrices[using]
        if not records:
            return []
        scores = matrix @ (vector / (np.linalg.norm(vector) or 1.0))
        hits = []
        for index in np.argsort(-scores, kind="stable"):
            record, score = records[index], float(scores[index])
            if score_threshold is not None and score < score_threshold:
                break
            if (filters or SearchFilters()).matches(record.payload):
                hits.append(Hit(record.payload["product_id"], score, dict(record.payload)))
                if len(hits) >= offset + limit:
                    break
        return hits[offset: offset + limit]

    def keyword_search(self, text: str, limit: int = 10, filters: SearchFilters | None = None, offset: int = 0) -> list[Hit]:
        points, documents = self._points(), self._documents()
        if not documents:
            return []
        average = sum(sum(d.values()) for d in documents) / len(documents)
        frequency = Counter(t for d in documents for t in d)
        terms = set(tokens(text))
        hits = []
        for record, document in zip(points, documents):
            if not (filters or SearchFilters()).matches(record.payload):
                continue
            length = sum(document.values())
            score = 0.0
            for term in terms:
                tf = document.get(term, 0)
                if tf:
                    idf = math.log(1 + (len(documents) - frequency[term] + 0.5) / (frequency[term] + 0.5))
                    score += idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * length / average))
            if score > 0:
                hits.append(Hit(record.payload["product_id"], score, dict(record.payload)))
        hits.sort(key=lambda h: -h.score)
        return hits[offset: offset + limit]

    def recommend(self, positive_ids: Sequence[str], negative_ids: Sequence[str] = (), using: str = "fused",
                  limit: int = 10, filters: SearchFilters | None = None, offset: int = 0,
                  score_threshold: float | None = None) -> list[Hit]:
        stored = self.vectors([*positive_ids, *negative_ids], [using])
        positive = [stored[p][using] for p in positive_ids if using in stored.get(p, {})]
        if not positive:
            return []
        negative = [stored[n][using] for n in negative_ids if using in stored.get(n, {})]
        unit = lambda v: v / (np.linalg.norm(v) or 1.0)  # noqa: E731
        target = np.mean([unit(v) for v in positive], axis=0)
        if negative:
            target = 2 * target - np.mean([unit(v) for v in negative], axis=0)
        base = filters or SearchFilters()
        excluded = SearchFilters(base.category, base.price_min, base.price_max, base.attributes, base.modalities,
                                 (*base.exclude_product_ids, *positive_ids, *negative_ids))
        return self.search(using, target, limit, excluded, offset, score_threshold)

    def product_point(self, product_id: str, vectors: Mapping[str, np.ndarray], payload: dict[str, Any]) -> Any:
        """What ``upsert`` takes (the agreed interface: ``ProductPoint``)."""
        return models.PointStruct(id=point_id(product_id), vector={k: v.tolist() for k, v in vectors.items()}, payload=payload)

    def vectors(self, product_ids: Sequence[str], names: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
        found: dict[str, dict[str, np.ndarray]] = {}
        for product_id in product_ids:
            record = self._store.get(product_id, with_vectors=True, collection=self._store.alias)
            if record is not None and isinstance(record.vector, dict):
                found[product_id] = {n: np.asarray(record.vector[n], dtype=np.float32) for n in names if n in record.vector}
        return found
