"""Score fusion and query words of the Searcher, without services."""

from __future__ import annotations

import pytest

from streams.adapters.store import Hit
from streams.worker.search import distribution_based_score_fusion, with_singulars


def ranked(pairs: list[tuple[str, float]]) -> list[Hit]:
    return [Hit(product_id, score, {"title": product_id}) for product_id, score in pairs]


FILLERS = [(f"f{i}", 0.50 + i * 0.001) for i in range(20)]
DENSE = ranked([("brand-word", 0.70), ("filler-top", 0.69), ("right", 0.52), *FILLERS])  # a close race
KEYWORD = ranked([("right", 12.0), ("brand-word", 6.0), *[(pid, 4.0 + i * 0.01) for i, (pid, _) in enumerate(FILLERS)]])


def test_a_clear_lead_in_one_list_beats_a_narrow_lead_in_another():
    """The case rank fusion lost: "right" leads the keyword list by far, "brand-word" the dense list
    by little; RRF scores both 1/61 + 1/62 (then order decides), DBSF keeps the size of each lead."""
    fused = distribution_based_score_fusion([(1.0, DENSE), (1.0, KEYWORD)])
    assert [hit.product_id for hit in fused[:2]] == ["right", "brand-word"]


def test_weights_scale_a_lists_say():
    fused = distribution_based_score_fusion([(1.0, DENSE), (0.1, KEYWORD)])
    assert fused[0].product_id == "brand-word"


def test_scores_are_placed_by_each_lists_mean_and_three_deviations_and_summed():
    fused = {hit.product_id: hit.score for hit in distribution_based_score_fusion(
        [(1.0, ranked([("a", 3.0), ("b", 1.0)])), (2.0, ranked([("b", 5.0), ("c", 5.0)])), (1.0, [])])}
    # list 1: mean 2, std 1 -> [-1, 5]; a = 4/6, b = 2/6; list 2: no spread -> 0.5 each, weight 2
    assert fused == pytest.approx({"a": 4 / 6, "b": 2 / 6 + 1.0, "c": 1.0})


def test_plural_query_words_carry_their_singular():
    assert with_singulars("red running shoes") == "red running shoes shoe"
    assert with_singulars("dress bags") == "dress bags bag"
