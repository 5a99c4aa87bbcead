"""Queries, engine-agnostic: text (dense, keyword or hybrid), image, video, similar-to-product and
recommendations, each hit explained by its per-modality scores. The HTTP API (``api.py``) is the
only caller; the CLI and the demo reach this code through that API, in the worker or in-process.

Scores of different lists are not on one scale (text-to-text cosines run higher than
text-to-image, BM25 is unbounded), so several lists are merged by weighted score
fusion (DBSF: each list's scores normalised by its own mean and spread, then summed; RRF kept only
the ranks and let a dense hit barely ahead of its neighbours beat a clear keyword lead: measured in
the README) and the hit says which score it carries (``score_kind``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

import numpy as np

from encoders_onnx.decoding import load_image
from streams.adapters.store import KEYWORD_FIELDS, Hit, KeywordField, ProductStore, SearchFilters
from streams.worker.encoders import Encoders

TextMode = Literal["dense", "keyword", "hybrid"]
ScoreKind = Literal["cosine", "bm25", "dbsf"]
TEXT_MODES: tuple[TextMode, ...] = ("dense", "keyword", "hybrid")
MODALITIES = ("text", "image", "video")
FUSION_DEPTH = 50  # hits taken from each list before fusing: a product ranked low in one list still counts


class QueryError(LookupError):
    """A query that cannot be answered (bad image, empty text, ...): the message says why."""


class UnknownProduct(QueryError):
    """A product id the query names is not in the served collection."""


@dataclass(frozen=True)
class Page:
    limit: int = 10
    offset: int = 0
    score_threshold: float | None = None  # on the final score; for fused lists on each list's cosine


@dataclass(frozen=True)
class ExplainedHit:
    product_id: str
    score: float
    score_kind: ScoreKind
    payload: dict[str, Any]
    scores: dict[str, float] = field(default_factory=dict)  # text/image/video cosines, keyword BM25


class Searcher:
    def __init__(self, store: ProductStore, encoders: Encoders, max_image_pixels: int,
                 default_mode: TextMode = "hybrid", keyword_weight: float = 0.5, value_weight: float = 2.0) -> None:
        self.store = store
        self.encoders = encoders
        self.max_image_pixels = max_image_pixels
        self.default_mode = default_mode
        # hybrid weights of the two keyword lists (free text; category and attribute values)
        self.keyword_weights: dict[KeywordField, float] = {"text": keyword_weight, "values": value_weight}

    def similar(self, product_id: str, filters: SearchFilters | None = None, page: Page = Page()) -> list[ExplainedHit]:
        return self.recommend([product_id], [], filters, page)

    def recommend(self, positive: Sequence[str], negative: Sequence[str] = (), filters: SearchFilters | None = None,
                  page: Page = Page()) -> list[ExplainedHit]:
        """Products like the positives and unlike the negatives, on the fused vector (the store's
        recommend: the inputs are never in the results); explained by cosines to the positives."""
        stored = self.store.vectors([*positive, *negative], ["fused", *MODALITIES])
        missing = [pid for pid in (*positive, *negative) if "fused" not in stored.get(pid, {})]
        if missing:
            raise UnknownProduct(f"product {missing[0]!r} is not indexed" if len(missing) == 1
                                 else f"products {', '.join(map(repr, missing))} are not indexed")
        hits = self.store.recommend(list(positive), list(negative), "fused", page.limit, filters,
                                    page.offset, page.score_threshold)
        query = {name: _unit(np.mean([_unit(stored[pid][name]) for pid in positive if name in stored[pid]], axis=0))
                 for name in MODALITIES if any(name in stored[pid] for pid in positive)}
        return self._explain(hits, "cosine", query)

    def by_text(self, text: str, filters: SearchFilters | None = None, page: Page = Page(),
                mode: TextMode | None = None) -> list[ExplainedHit]:
        if not text.strip():
            raise QueryError("the text query is empty")
        mode = mode or self.default_mode
        encoded = self.encoders.text.encode([text])
        if mode == "keyword":  # one BM25 list, summed over both fields
            keyword = self.store.keyword_search(with_singulars(text), page.offset + page.limit, filters)
            hits = [h for h in keyword[page.offset:] if page.score_threshold is None or h.score >= page.score_threshold]
            return self._explain(hits, "bm25", self._query_vectors("text", encoded), [keyword])
        depth = max(page.offset + page.limit, FUSION_DEPTH)
        keyword_lists = {field: self.store.keyword_search(with_singulars(text), depth, filters, fields=(field,))
                         for field in KEYWORD_FIELDS} if mode == "hybrid" else {}
        return self._dense("text", encoded, filters, page,
                           [(self.keyword_weights[field], hits) for field, hits in keyword_lists.items()])

    def by_image(self, data: bytes, filters: SearchFilters | None = None, page: Page = Page()) -> list[ExplainedHit]:
        image = load_image(data, self.max_image_pixels)
        return self._dense("image", self.encoders.image.encode([image]), filters, page)

    def by_video(self, data: bytes, filters: SearchFilters | None = None, page: Page = Page()) -> list[ExplainedHit]:
        return self._dense("video", self.encoders.video.encode(data)[None, :], filters, page)

    def _query_vectors(self, modality: str, encoded: np.ndarray) -> dict[str, np.ndarray]:
        """The query projected into the stored space, once per named vector it is compared with
        (with a trained bundle a text query also finds products by their photos)."""
        vector = self.encoders.fusion.project(**{modality: encoded})[modality][0]
        return {using: vector for using in self.encoders.fusion.search_targets[modality]}

    def _dense(self, modality: str, encoded: np.ndarray, filters: SearchFilters | None, page: Page,
               keyword: Sequence[tuple[float, Sequence[Hit]]] = ()) -> list[ExplainedHit]:
        """One cosine list is returned as it is; several (more targets, or weighted keyword lists
        beside them) are fused by weighted DBSF over their first ``FUSION_DEPTH`` (or ``offset + limit``) hits."""
        query = self._query_vectors(modality, encoded)
        if len(query) == 1 and not keyword:
            using, vector = next(iter(query.items()))
            hits = self.store.search(using, vector, page.limit, filters, page.offset, page.score_threshold)
            return self._explain(hits, "cosine", query)
        depth = max(page.offset + page.limit, FUSION_DEPTH)
        lists = [(1.0, self.store.search(using, vector, depth, filters, 0, page.score_threshold))
                 for using, vector in query.items()]
        lists.extend(keyword)
        fused = distribution_based_score_fusion(lists)[page.offset: page.offset + page.limit]
        return self._explain(fused, "dbsf", query, [hits for _, hits in keyword])

    def _explain(self, hits: Sequence[Hit], kind: ScoreKind, query: Mapping[str, np.ndarray],
                 keyword: Sequence[Sequence[Hit]] = ()) -> list[ExplainedHit]:
        """Each hit with the cosine of the query to each of its stored modality vectors, and its
        BM25 score (summed over the keyword lists that hold it) where keyword search ran: why it
        matched, beside the final score."""
        stored = self.store.vectors([h.product_id for h in hits], list(query)) if query else {}
        bm25: dict[str, float] = {}
        for keyword_hits in keyword:
            for h in keyword_hits:
                bm25[h.product_id] = bm25.get(h.product_id, 0.0) + h.score
        explained = []
        for hit in hits:
            scores = {name: round(float(_unit(vector) @ _unit(query[name])), 4)
                      for name, vector in stored.get(hit.product_id, {}).items()}
            if hit.product_id in bm25:
                scores["keyword"] = round(bm25[hit.product_id], 4)
            explained.append(ExplainedHit(hit.product_id, hit.score, kind, hit.payload, scores))
        return explained


def with_singulars(text: str) -> str:
    """The text with the singular of each plural word beside it: the keyword index does not stem,
    and catalogs title a product "Shoe" as often as "Shoes"."""
    words = text.split()
    singulars = [w[:-1] for w in words if len(w) > 3 and w.lower().endswith("s") and not w.lower().endswith("ss")]
    return " ".join([*words, *singulars])


def distribution_based_score_fusion(lists: Sequence[tuple[float, Sequence[Hit]]]) -> list[Hit]:
    """Weighted DBSF (as Qdrant fuses): each list's score is placed between its mean minus and plus
    three standard deviations (0 and 1; not clipped, so an outlier keeps its lead), then a product
    scores the weighted sum over the lists that hold it. Unlike RRF the size of a lead survives."""
    fused: dict[str, float] = {}
    payloads: dict[str, dict[str, Any]] = {}
    for weight, hits in lists:
        if not hits:
            continue
        scores = np.array([hit.score for hit in hits], dtype=np.float64)
        low, spread = scores.mean() - 3 * scores.std(), 6 * scores.std()
        for hit, score in zip(hits, scores):
            normalised = float((score - low) / spread) if spread > 0 else 0.5
            fused[hit.product_id] = fused.get(hit.product_id, 0.0) + weight * normalised
            payloads[hit.product_id] = hit.payload
    ranked = sorted(fused.items(), key=lambda item: -item[1])
    return [Hit(product_id, score, payloads[product_id]) for product_id, score in ranked]


def _unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float32)
    return vector / (np.linalg.norm(vector) or 1.0)
