"""The user encoder: decay and weights do what they say, the order of events does not matter,
and MMR trades relevance for variety."""

from __future__ import annotations

import numpy as np
import pytest

from encoders_onnx.profile import decayed_profile, mmr

E = np.eye(4, dtype=np.float32)


def test_recent_interactions_weigh_more_with_decay() -> None:
    # the same product kind, one old (two half-lives before the other)
    profile = decayed_profile(E[[0, 1]], np.array([1.0, 1.0]), np.array([0.0, 200.0]), half_life_s=100.0)
    assert profile[1] == pytest.approx(4 * profile[0])
    flat = decayed_profile(E[[0, 1]], np.array([1.0, 1.0]), np.array([0.0, 200.0]), half_life_s=0.0)
    assert flat[0] == pytest.approx(flat[1])
    assert np.linalg.norm(profile) == pytest.approx(1.0)


def test_weights_and_order_independence() -> None:
    rng = np.random.default_rng(0)
    vectors, weights, times = rng.normal(size=(20, 8)), rng.uniform(0.5, 4, 20), rng.uniform(0, 1e6, 20)
    base = decayed_profile(vectors, weights, times, 86400.0)
    order = rng.permutation(20)
    assert np.allclose(decayed_profile(vectors[order], weights[order], times[order], 86400.0), base, atol=1e-6)
    heavy = decayed_profile(E[[0, 1]], np.array([1.0, 3.0]), np.array([5.0, 5.0]), 100.0)
    assert heavy[1] == pytest.approx(3 * heavy[0])


def test_times_far_from_the_epoch_do_not_overflow() -> None:
    profile = decayed_profile(E[[0, 1]], np.ones(2), np.array([4e9, 4e9 + 60]), half_life_s=1.0)
    assert np.all(np.isfinite(profile)) and profile[1] > 0.99


def test_mmr_without_diversity_keeps_relevance_order_and_with_it_spreads_out() -> None:
    query = np.array([1.0, 0.2, 0.0], dtype=np.float32)
    candidates = np.array([[1, 0.2, 0], [1, 0.21, 0], [0.7, 0.7, 0.1]], dtype=np.float32)  # two near-duplicates
    assert mmr(query, candidates, 3, 0.0) == [0, 1, 2]
    assert mmr(query, candidates, 2, 0.7) == [0, 2]
    with pytest.raises(ValueError, match="diversity"):
        mmr(query, candidates, 2, 1.5)
