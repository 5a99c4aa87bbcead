"""The user encoder: a shopper's history of product vectors into one vector, and MMR re-ranking.

Pure numpy, in this lowest layer because two callers must run the very same arithmetic: the
worker (``streams.worker.profiles``, ``streams.worker.recommend``) and the offline evaluation
(``exporters.shoppers``), which may not import the worker. What the evaluation measures is
then exactly what serves.

The profile is ``sum_i w(kind_i) * 2^((t_i - t_ref) / half_life) * v_i`` over unit product
vectors ``v_i``. Every event contributes on its own and the sum commutes, so the order in which
events arrive does not matter; ``t_ref`` only rescales the sum (the latest event time keeps the
exponent bounded), and a rescaled vector ranks products by cosine exactly as before.
"""

from __future__ import annotations

import numpy as np

from encoders_onnx.session import l2_normalize


def decayed_profile(vectors: np.ndarray, weights: np.ndarray, times: np.ndarray, half_life_s: float) -> np.ndarray:
    """A unit vector (or all zeros when the weights cancel out). ``half_life_s <= 0``: no decay."""
    if len(vectors) == 0:
        raise ValueError("a profile needs at least one product vector")
    times = np.asarray(times, dtype=np.float64)
    decay = np.exp2((times - times.max()) / half_life_s) if half_life_s > 0 else np.ones(len(times))
    coefficients = np.asarray(weights, dtype=np.float64) * decay
    summed = coefficients @ l2_normalize(np.asarray(vectors, dtype=np.float32)).astype(np.float64)
    return l2_normalize(summed[None, :].astype(np.float32))[0]


def mmr(query: np.ndarray, candidates: np.ndarray, k: int, diversity: float) -> list[int]:
    """Maximal marginal relevance: greedily pick the candidate maximising
    ``(1 - diversity) * cos(query, c) - diversity * max cos(c, already picked)``.
    ``diversity`` 0 keeps the relevance order; 1 picks the most mutually different."""
    if not 0.0 <= diversity <= 1.0:
        raise ValueError(f"diversity must be within [0, 1], got {diversity}")
    units = l2_normalize(np.asarray(candidates, dtype=np.float32))
    relevance = units @ l2_normalize(np.asarray(query, dtype=np.float32)[None, :])[0]
    picked: list[int] = []
    redundancy = np.full(len(units), -np.inf)
    available = np.ones(len(units), dtype=bool)
    for _ in range(min(k, len(units))):
        penalty = np.where(np.isinf(redundancy), 0.0, redundancy)
        score = np.where(available, (1.0 - diversity) * relevance - diversity * penalty, -np.inf)
        best = int(np.argmax(score))
        picked.append(best)
        available[best] = False
        redundancy = np.maximum(redundancy, units @ units[best])
    return picked
