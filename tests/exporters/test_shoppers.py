"""The shopper simulator and the leave-last-out protocol, on a small synthetic catalog whose
tastes are clusters: profiles must beat popularity there, and everything is seeded."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from encoders_onnx.session import l2_normalize
from exporters.shoppers import (
    evaluate_shoppers,
    leave_last_out,
    popularity,
    profile_scorer,
    read_interaction_log,
    simulate_shoppers,
)

TASTES = np.repeat(np.arange(12), 25)  # 12 tastes of 25 products


def clustered_vectors(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, 32))
    return l2_normalize((centres[TASTES] + 0.5 * rng.normal(size=(len(TASTES), 32))).astype(np.float32))


def test_the_simulator_is_seeded_and_follows_its_rules() -> None:
    a, b = simulate_shoppers(TASTES, 50, seed=3), simulate_shoppers(TASTES, 50, seed=3)
    assert [s.rows.tolist() for s in a] == [s.rows.tolist() for s in b]
    assert [s.rows.tolist() for s in a] != [s.rows.tolist() for s in simulate_shoppers(TASTES, 50, seed=4)]
    for shopper in a:
        assert len(set(shopper.rows.tolist())) == len(shopper.rows) >= 2  # never the same product twice
        assert np.all(np.diff(shopper.times) > 0)
        assert len(set(TASTES[shopper.rows].tolist())) <= 3 + len(shopper.rows) // 3  # few tastes, some noise
    quiet = simulate_shoppers(TASTES, 50, seed=3, noise=0.0)
    assert all(len(set(TASTES[s.rows].tolist())) <= 3 for s in quiet)


def test_profiles_beat_popularity_and_the_report_has_every_method() -> None:
    vectors = clustered_vectors()
    shoppers = simulate_shoppers(TASTES, 200, seed=0)
    pop = leave_last_out(shoppers, popularity(shoppers, len(TASTES)))
    profile = leave_last_out(shoppers, profile_scorer(vectors, {"view": 1.0, "click": 1.0, "add_to_cart": 1.0, "purchase": 1.0}, 0.0))
    assert profile["hr@10"] > 2 * pop["hr@10"]
    assert 0.0 <= profile["ndcg@10"] <= profile["hr@10"] <= 1.0
    report = evaluate_shoppers({"fused": vectors, "text": vectors}, shoppers, simulate_shoppers(TASTES, 100, seed=1), len(TASTES))
    assert {(r["method"], r["vectors"]) for r in report["methods"]} >= {
        ("popularity", "-"), ("decayed profile + MMR", "fused"), ("last-item-similar", "text")}
    assert report["weights"] in {row["weights"] for row in report["tuning"]}


def test_a_real_log_is_read_in_time_order(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    log.write_text("user,product,time,kind\nu1,b,20,click\nu1,a,10,\nu1,zz,15,view\nu2,a,1,view\n")
    [shopper] = read_interaction_log(log, ["a", "b", "c"])  # u2 has one interaction: dropped; zz unknown
    assert shopper.rows.tolist() == [0, 1] and shopper.kinds == ("view", "click")
