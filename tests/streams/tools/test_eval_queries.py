"""The attribute-query evaluation: queries from a template, relevance by attributes, the metrics,
and a whole run on the demo catalog through the real encoders and the served search code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streams.settings import Settings
from streams.tools.eval_queries import VARIANTS, Row, best_mode, evaluate, make_queries, metrics, read_rows

CATALOG = Path(__file__).resolve().parents[3] / "demo" / "catalog"


def row(product_id: str, **columns: str) -> Row:
    return Row(product_id, f"title {product_id}", "", [], {}, columns)


def test_queries_are_the_value_combinations_held_by_enough_products():
    rows = [row("1", colour="Red", kind="Bags"), row("2", colour="red", kind="Bags"), row("3", colour="Red", kind="Bags"),
            row("4", colour="Blue", kind="Bags"), row("5", colour="Red")]
    queries = make_queries(rows, "{colour} {kind}", min_relevant=2)
    assert [q.text for q in queries] == ["Red Bags"]
    assert [r.product_id for r in rows if queries[0].relevant(r)] == ["1", "2", "3"]  # any case
    with pytest.raises(ValueError, match="names no"):
        make_queries(rows, "shoes", 1)


def test_metrics_at_ten():
    assert metrics([True] * 10, 12) == {"p@10": 1.0, "ndcg@10": 1.0, "mrr": 1.0}
    assert metrics([False] * 10, 3) == {"p@10": 0.0, "ndcg@10": 0.0, "mrr": 0.0}
    second = metrics([False, True] + [False] * 8, 1)
    assert second["p@10"] == 0.1 and second["mrr"] == 0.5 and second["ndcg@10"] == pytest.approx(1 / 1.5849625, abs=1e-6)
    assert metrics([False] * 10 + [True], 1)["mrr"] == 0.0  # beyond the cutoff


def test_a_run_on_the_demo_catalog_reports_every_mode_on_both_indexes(model_dir, tmp_path):
    rows = read_rows(CATALOG / "products.csv", json.loads((CATALOG / "mapping.json").read_text()))
    queries = make_queries(rows, "{baseColour} {articleType} for {gender}", min_relevant=3)
    assert len(queries) >= 5
    settings = Settings.from_env(env={}, state_dir=str(tmp_path), qdrant_path=str(tmp_path / "q"), model_dir=str(model_dir))
    report = evaluate(settings, rows, queries, [0.5], [1, 2])
    assert set(report["variants"]) == set(VARIANTS)
    for results in report["variants"].values():
        assert set(results) == {"dense", "keyword", "hybrid (keyword weights 0.5 text, 1 values)",
                                "hybrid (keyword weights 0.5 text, 2 values)"}
        assert all(0.0 <= value <= 1.0 for m in results.values() for value in m.values())
    # the indexes differ only in what the keyword index reads: dense search is the same on both
    assert report["variants"]["full"]["dense"] == report["variants"]["titles"]["dense"]
    assert report["variants"]["full"]["keyword"] != report["variants"]["titles"]["keyword"]
    # the titles index has no values list: its weight changes nothing there
    titles = report["variants"]["titles"]
    assert titles["hybrid (keyword weights 0.5 text, 1 values)"] == titles["hybrid (keyword weights 0.5 text, 2 values)"]


def test_the_best_mode_is_chosen_on_titles_only_and_a_tie_by_the_full_index():
    def m(ndcg: float) -> dict[str, float]:
        return {"p@10": 0.0, "ndcg@10": ndcg, "mrr": 0.0}

    report = {"variants": {"titles": {"dense": m(0.6), "keyword": m(0.5), "hybrid (keyword weight 1)": m(0.669),
                                      "hybrid (keyword weight 0.5)": m(0.669)},
                           "full": {"dense": m(0.9), "keyword": m(0.9), "hybrid (keyword weight 1)": m(0.72),
                                    "hybrid (keyword weight 0.5)": m(0.70)}}}
    assert best_mode(report) == "hybrid (keyword weight 1)"
