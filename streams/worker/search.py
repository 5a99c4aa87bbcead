"""Queries: similar items, search by text and by image, in one place for the worker's HTTP API
and for the CLI.

Qdrant local mode admits one process per folder, and the worker holds it while it runs. So the
CLI asks the worker's HTTP API first and opens the store itself only when no worker answers.
"""

from __future__ import annotations

import base64
from dataclasses import replace
from typing import Any

import numpy as np

from encoders_onnx.decoding import load_image
from streams.adapters.store import Hit, ProductStore, SearchFilters
from streams.worker.encoders import Encoders

MODES = ("similar", "text", "image", "video")
RRF_K = 60  # the usual reciprocal-rank-fusion constant: a list's first hits count most, none dominate


class QueryError(LookupError):
    """A query that cannot be answered (unknown product, bad image, ...): the message says why."""


class Searcher:
    def __init__(self, store: ProductStore, encoders: Encoders, max_image_pixels: int) -> None:
        self.store = store
        self.encoders = encoders
        self.max_image_pixels = max_image_pixels

    def similar(self, product_id: str, k: int = 10, filters: SearchFilters | None = None) -> list[Hit]:
        vector = self.store.vector(product_id, "fused", collection=self.store.alias)
        if vector is None:
            raise QueryError(f"product {product_id!r} is not indexed")
        filters = filters or SearchFilters()
        return self.store.search("fused", vector, k, replace(filters, exclude_product_ids=(*filters.exclude_product_ids, product_id)))

    def by_text(self, text: str, k: int = 10, filters: SearchFilters | None = None) -> list[Hit]:
        if not text.strip():
            raise QueryError("the text query is empty")
        return self._search("text", self.encoders.text.encode([text]), k, filters)

    def by_image(self, data: bytes, k: int = 10, filters: SearchFilters | None = None) -> list[Hit]:
        image = load_image(data, self.max_image_pixels)
        return self._search("image", self.encoders.image.encode([image]), k, filters)

    def by_video(self, data: bytes, k: int = 10, filters: SearchFilters | None = None) -> list[Hit]:
        return self._search("video", self.encoders.video.encode(data)[None, :], k, filters)

    def _search(self, modality: str, encoded: np.ndarray, k: int, filters: SearchFilters | None) -> list[Hit]:
        """Project the query into the stored space and search every named vector of that space
        (with a trained bundle a text query also finds products by their photos). Cosines of
        different named vectors are not on one scale (text-to-text runs higher than
        text-to-image), so several result lists are merged by reciprocal-rank fusion."""
        vector = self.encoders.fusion.project(**{modality: encoded})[modality][0]
        targets = self.encoders.fusion.search_targets[modality]
        if len(targets) == 1:
            return self.store.search(targets[0], vector, k, filters)
        fused: dict[str, float] = {}
        payloads: dict[str, dict[str, Any]] = {}
        for using in targets:
            for rank, hit in enumerate(self.store.search(using, vector, k, filters)):
                fused[hit.product_id] = fused.get(hit.product_id, 0.0) + 1.0 / (RRF_K + rank + 1)
                payloads[hit.product_id] = hit.payload
        ranked = sorted(fused.items(), key=lambda item: -item[1])[:k]
        return [Hit(product_id, score, payloads[product_id]) for product_id, score in ranked]

    def answer(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        """Answer a query in its wire form (see ``query_request``); used by the HTTP API."""
        mode = request.get("mode")
        k = int(request.get("k", 10))
        filters = SearchFilters(request.get("category"), request.get("price_min"), request.get("price_max"))
        if mode == "similar":
            hits = self.similar(str(request["product_id"]), k, filters)
        elif mode == "text":
            hits = self.by_text(str(request["text"]), k, filters)
        elif mode == "image":
            hits = self.by_image(base64.b64decode(request["media_b64"]), k, filters)
        elif mode == "video":
            hits = self.by_video(base64.b64decode(request["media_b64"]), k, filters)
        else:
            raise QueryError(f"unknown query mode {mode!r} (expected one of {', '.join(MODES)})")
        return [hit_row(rank, hit) for rank, hit in enumerate(hits, start=1)]


def hit_row(rank: int, hit: Hit) -> dict[str, Any]:
    payload = hit.payload
    return {
        "rank": rank,
        "product_id": hit.product_id,
        "score": round(hit.score, 4),
        "title": payload.get("title", ""),
        "category": " > ".join(payload.get("category") or []),
        "price": payload.get("price"),
        "modalities": payload.get("modalities", []),
    }
