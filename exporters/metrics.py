"""Retrieval metrics on hand-checkable inputs, shared by training (the bundle's headline numbers)
and evaluation (every method's row). Definitions are in ``exporters.evaluate``'s docstring."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from encoders_onnx.fusion import MODALITIES, FusionModel
from encoders_onnx.session import l2_normalize
from exporters.catalog import Catalog
from exporters.features import Features

K = 10
RECALL_KS = (1, 5, 10)
_CHUNK = 2048


# -- metrics on hand-checkable inputs ------------------------------------------------------------


def precision_at_k(hits: np.ndarray) -> float:
    """Mean over queries of the fraction of hits in their top k (``hits``: (queries, k) bool)."""
    return float(hits.mean()) if hits.size else 0.0


def average_precision_at_k(hits: np.ndarray, n_relevant: np.ndarray) -> float:
    """mAP@k with the min(k, relevant) denominator; queries with nothing relevant are skipped."""
    k = hits.shape[1]
    precision = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    ap = (precision * hits).sum(axis=1) / np.maximum(np.minimum(n_relevant, k), 1)
    scored = n_relevant > 0
    return float(ap[scored].mean()) if scored.any() else 0.0


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    """Fraction of queries whose own item ranks at or above k (ranks are 1-based)."""
    return float((ranks <= k).mean())


def mean_reciprocal_rank(ranks: np.ndarray) -> float:
    return float((1.0 / ranks).mean())


# -- retrieval ------------------------------------------------------------------------------------


def top_k(queries: np.ndarray, gallery: np.ndarray, k: int, exclude_self: bool) -> np.ndarray:
    """(queries, k) gallery indices by descending dot product; chunked so memory stays flat.

    k shrinks to the gallery size (less the query itself) on galleries smaller than k.
    """
    k = min(k, len(gallery) - int(exclude_self))
    out = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), _CHUNK):
        sims = queries[start : start + _CHUNK] @ gallery.T
        if exclude_self:
            rows = np.arange(len(sims))
            sims[rows, start + rows] = -np.inf
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.lexsort((part, -np.take_along_axis(sims, part, axis=1)), axis=1)
        out[start : start + len(sims)] = np.take_along_axis(part, order, axis=1)
    return out


def own_ranks(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """1-based rank of gallery row i for query row i; ties go to the earlier catalog row."""
    ranks = np.empty(len(queries), np.int64)
    for start in range(0, len(queries), _CHUNK):
        sims = queries[start : start + _CHUNK] @ gallery.T
        rows = np.arange(len(sims))
        own = sims[rows, start + rows][:, None]
        earlier = np.arange(gallery.shape[0])[None, :] < (start + rows)[:, None]
        ranks[start : start + len(sims)] = 1 + (sims > own).sum(axis=1) + ((sims == own) & earlier).sum(axis=1)
    return ranks


def item_to_item(vectors: np.ndarray, labels: np.ndarray, k: int = K) -> dict[str, float]:
    """Each item queries all the others; a hit shares its label."""
    hits = labels[top_k(vectors, vectors, k, exclude_self=True)] == labels[:, None]
    counts = np.bincount(labels)[labels] - 1
    return {f"p@{k}": precision_at_k(hits), f"map@{k}": average_precision_at_k(hits, counts)}


def text_to_image(
    queries: np.ndarray, gallery: np.ndarray, labels: np.ndarray | None = None, rows: np.ndarray | None = None
) -> dict[str, float]:
    """Row i of ``queries`` (a title) should find row i of ``gallery`` (its product's image).

    ``rows`` keeps only some queries; the gallery always holds every product.
    """
    rows = np.ones(len(queries), bool) if rows is None else rows
    ranks = own_ranks(queries, gallery)[rows]
    out = {f"recall@{k}": recall_at_k(ranks, k) for k in RECALL_KS}
    out["mrr"] = mean_reciprocal_rank(ranks)
    if labels is not None:
        hits = labels[top_k(queries[rows], gallery, K, exclude_self=False)] == labels[rows][:, None]
        out[f"p@{K}_fine"] = precision_at_k(hits)
    return out


T2I_NAMES = (*(f"recall@{k}" for k in RECALL_KS), "mrr", f"p@{K}_fine")


LEVELS = ("fine", "coarse")


def method_metrics(
    vectors: np.ndarray,
    labels: Mapping[str, np.ndarray],
    t2i: tuple[np.ndarray, np.ndarray] | None = None,
    t2i_queries: Mapping[str, np.ndarray] | None = None,
) -> dict[str, float | None]:
    """All metric names for one method.

    ``labels`` maps a level (fine, coarse) to label codes; ``t2i_queries`` maps a metric-name
    suffix to the query rows of that variant. A level the catalog lacks, and text-to-image where
    the method has no shared space, give None.
    """
    out: dict[str, float | None] = {}
    for level in LEVELS:
        values = item_to_item(vectors, labels[level]) if level in labels else dict.fromkeys((f"p@{K}", f"map@{K}"))
        out.update({f"{name}_{level}": v for name, v in values.items()})
    for suffix, rows in (t2i_queries or {"": None}).items():
        values = text_to_image(*t2i, labels["fine"], rows) if t2i is not None else dict.fromkeys(T2I_NAMES)
        out.update({f"t2i_{name}{suffix}": v for name, v in values.items()})
    return out


def bundle_metrics(model: FusionModel, features: Features, labels: Mapping[str, np.ndarray]) -> dict[str, float]:
    """The headline numbers of a bundle on one split (recorded in ``bundle.json`` by training)."""
    fused = fused_vectors(model, features)
    z = model.project(text=features.vectors["text"], image=features.vectors["image"])
    both = features.present["text"] & features.present["image"]
    out = {f"fused_{n}_{lvl}": v for lvl, y in labels.items() for n, v in item_to_item(fused, y).items()}
    out.update({f"t2i_{n}": v for n, v in text_to_image(z["text"][both], z["image"][both], labels["fine"][both]).items()})
    return {k: round(v, 4) for k, v in out.items()}


def split_labels(catalog: Catalog, index: np.ndarray) -> dict[str, np.ndarray]:
    """Label codes of some products per level; ``coarse`` only where the mapping names one."""
    levels = LEVELS if catalog.mapping.coarse else ("fine",)
    return {level: catalog.labels(level)[index] for level in levels}


def projection_mean(projected: Mapping[str, np.ndarray], features: Features) -> np.ndarray:
    """The unit mean of each product's present projections: the label-free fusion."""
    return l2_normalize(sum(projected[m] * features.present[m][:, None] for m in features.modalities))


def fused_vectors(model: FusionModel, features: Features) -> np.ndarray:
    n = len(features.present["text"])
    present = np.stack([features.present.get(m, np.zeros(n, bool)) for m in MODALITIES], axis=1)
    return model.fuse_arrays(**features.vectors, present_mask=present).vectors
