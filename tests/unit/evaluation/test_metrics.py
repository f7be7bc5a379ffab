"""Ranking metrics of ``ragserve eval`` against hand-computed values."""

from __future__ import annotations

import math

import pytest

from deployments.evaluation import metrics
from deployments.evaluation.metrics import dedupe, ndcg_at_k, recall_at_k, reciprocal_rank, score

D2, D3, D6 = 1 / math.log2(2), 1 / math.log2(3), 1 / math.log2(6)  # DCG discounts of ranks 1, 2, 5


def test_two_relevant_at_ranks_2_and_5() -> None:
    ranked, rel = ["a", "b", "c", "d", "e", "f"], {"b", "e"}
    assert recall_at_k(ranked, rel, 1) == 0
    assert recall_at_k(ranked, rel, 2) == 0.5
    assert recall_at_k(ranked, rel, 5) == 1
    assert reciprocal_rank(ranked, rel) == 0.5
    # DCG = 1/log2(3) + 1/log2(6) = 1.01778; ideal = 1 + 1/log2(3) = 1.63093
    assert ndcg_at_k(ranked, rel, 10) == pytest.approx((D3 + D6) / (D2 + D3))
    assert ndcg_at_k(ranked, rel, 10) == pytest.approx(0.62405, abs=1e-5)
    # the second hit is past k=4: only rank 2 counts, the ideal still has both
    assert ndcg_at_k(ranked, rel, 4) == pytest.approx(D3 / (D2 + D3))


def test_perfect_and_empty_rankings() -> None:
    assert score(["a", "b"], ["a"]) == {"recall@1": 1, "recall@5": 1, "recall@10": 1, "mrr": 1, "ndcg@10": 1}
    assert score(["x", "y"], ["a"]) == {"recall@1": 0, "recall@5": 0, "recall@10": 0, "mrr": 0, "ndcg@10": 0}
    assert score([], ["a"])["ndcg@10"] == 0


def test_one_of_two_relevant_found_first() -> None:
    s = score(["a", "x", "y"], ["a", "b"])
    assert (s["recall@1"], s["recall@10"], s["mrr"]) == (0.5, 0.5, 1.0)
    assert s["ndcg@10"] == pytest.approx(1 / (1 + D3))  # 0.61315
    assert s["ndcg@10"] == pytest.approx(0.61315, abs=1e-5)


def test_reciprocal_rank_is_of_the_first_relevant_only() -> None:
    assert reciprocal_rank(["x", "y", "a", "b"], {"a", "b"}) == pytest.approx(1 / 3)
    assert reciprocal_rank(["x", "y"], {"a"}) == 0


def test_more_relevant_than_k_caps_the_ideal_at_k() -> None:
    rel = [f"r{i}" for i in range(12)]
    ranked = rel[:10]
    assert ndcg_at_k(ranked, rel, 10) == pytest.approx(1.0)
    assert recall_at_k(ranked, rel, 10) == pytest.approx(10 / 12)


def test_a_hit_at_rank_11_does_not_count() -> None:
    ranked = [f"x{i}" for i in range(10)] + ["a"]
    assert ndcg_at_k(ranked, {"a"}, 10) == 0
    assert recall_at_k(ranked, {"a"}, 10) == 0
    assert reciprocal_rank(ranked, {"a"}) == pytest.approx(1 / 11)  # over the whole returned list


def test_dedupe_keeps_each_document_at_its_best_rank() -> None:
    assert dedupe(["d1", "d2", "d1", "d3", "d2"]) == ["d1", "d2", "d3"]
    # without dedupe a document with two chunks would take two ranks
    assert score(dedupe(["a", "a", "b"]), ["b"])["mrr"] == 0.5


def test_no_relevant_ids_is_an_error() -> None:
    with pytest.raises(ValueError, match="relevant"):
        score(["a"], [])
    with pytest.raises(ValueError, match="no scores"):
        metrics.mean([])


def test_mean_and_groups() -> None:
    items = [
        {"lang": "en", "s": score(["a"], ["a"])},          # all 1
        {"lang": "en", "s": score(["x", "a"], ["a"])},     # R@1 0, MRR 0.5, nDCG 1/log2(3)
        {"lang": "zh", "s": score(["x"], ["a"])},          # all 0
    ]
    overall = metrics.mean([i["s"] for i in items])
    assert overall["recall@1"] == pytest.approx(1 / 3)
    assert overall["recall@5"] == pytest.approx(2 / 3)
    assert overall["mrr"] == pytest.approx(1.5 / 3)
    assert overall["ndcg@10"] == pytest.approx((1 + D3) / 3)
    groups = metrics.grouped(items, lambda i: i["lang"], lambda i: i["s"])
    assert list(groups) == ["en", "zh"]
    assert groups["en"]["n"] == 2 and groups["zh"]["n"] == 1
    assert groups["en"]["mrr"] == pytest.approx(0.75) and groups["en"]["recall@1"] == 0.5
    assert groups["zh"] == {"n": 1, **{m: 0 for m in metrics.METRICS}}


def test_paired_bootstrap_of_a_sure_and_an_unsure_difference() -> None:
    from deployments.evaluation.metrics import paired_bootstrap

    # Every question 0.1 better: every resample says so.
    sure = paired_bootstrap([0.6] * 50, [0.5] * 50, rounds=500)
    assert sure["diff"] == pytest.approx(0.1) and sure["low"] == pytest.approx(0.1)
    assert sure["p_not_better"] == 0.0
    # Better on half the questions by as much as it is worse on the other half: no difference.
    unsure = paired_bootstrap([1.0, 0.0] * 25, [0.0, 1.0] * 25, rounds=500)
    assert unsure["diff"] == pytest.approx(0.0) and unsure["low"] < 0 < unsure["high"]
    assert 0.3 < unsure["p_not_better"] < 0.8
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [1.0, 2.0])
