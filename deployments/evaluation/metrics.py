"""Ranking metrics with binary relevance: recall@k, reciprocal rank, nDCG@k; means and groupings.

Pure functions over a ranked list of document ids (best first, no duplicates: see
:func:`dedupe`) and the set of relevant ids. Every metric lies in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

#: The per-question scores, in table order.
METRICS: tuple[str, ...] = ("recall@1", "recall@5", "recall@10", "mrr", "ndcg@10")
#: Column headers of the scores in printed tables.
#: Whether the first relevant id is ranked above every near-duplicate ("twin") of the relevant
#: passages (:func:`above_twins`); scored per question beside :data:`METRICS`.
TWIN = "above_twin"
#: Every per-question score of a retrieval question, in table order.
QUESTION_METRICS: tuple[str, ...] = (*METRICS, TWIN)
LABELS: dict[str, str] = {"recall@1": "R@1", "recall@5": "R@5", "recall@10": "R@10", "mrr": "MRR",
                          "ndcg@10": "nDCG@10", TWIN: "twin"}

T = TypeVar("T")


def dedupe(ids: Iterable[str]) -> list[str]:
    """Ids in first-seen order without repeats: several chunks of one document count once, at the
    rank of its best chunk (otherwise one document could fill several ranks and inflate recall)."""
    return list(dict.fromkeys(ids))


def _check(relevant: Iterable[str]) -> set[str]:
    rel = set(relevant)
    if not rel:
        raise ValueError("a question needs at least one relevant id")
    return rel


def recall_at_k(ranked: Sequence[str], relevant: Iterable[str], k: int) -> float:
    """Share of the relevant ids found among the first ``k`` ranked ids."""
    rel = _check(relevant)
    return len(rel.intersection(ranked[:k])) / len(rel)


def reciprocal_rank(ranked: Sequence[str], relevant: Iterable[str]) -> float:
    """1 / (1-based rank of the first relevant id), 0 if none is in ``ranked``.

    Computed over whatever list is given (the returned top 10), so it is MRR@len(ranked).
    """
    rel = _check(relevant)
    for rank, doc in enumerate(ranked, start=1):
        if doc in rel:
            return 1.0 / rank
    return 0.0


def ndcg_at_k(ranked: Sequence[str], relevant: Iterable[str], k: int = 10) -> float:
    """Normalised discounted cumulative gain with binary gains.

    DCG = sum over relevant ranks r <= k of 1 / log2(r + 1); the ideal DCG puts all relevant ids
    first, i.e. sums the same discount over ranks 1..min(|relevant|, k).
    """
    rel = _check(relevant)
    dcg = sum(1.0 / math.log2(r + 1) for r, doc in enumerate(ranked[:k], start=1) if doc in rel)
    ideal = sum(1.0 / math.log2(r + 1) for r in range(1, min(len(rel), k) + 1))
    return dcg / ideal


def above_twins(ranked: Sequence[str], relevant: Iterable[str], twins: Iterable[str]) -> float:
    """1.0 when a relevant id is ranked and comes before every twin (a twin not ranked at all
    counts as below), else 0.0. Without twins it is whether a relevant id is ranked at all.

    Recall@1 asks "is the right passage first?"; this asks the narrower "is it above the
    passages most easily mistaken for it?" (3.4.0 vs 3.4.1, HX-420 vs HX-430).
    """
    rel, twin = _check(relevant), set(twins)
    for doc in ranked:
        if doc in rel:
            return 1.0
        if doc in twin:
            return 0.0
    return 0.0


def score(ranked: Sequence[str], relevant: Iterable[str]) -> dict[str, float]:
    """Every metric of :data:`METRICS` for one question."""
    rel = _check(relevant)
    return {
        "recall@1": recall_at_k(ranked, rel, 1),
        "recall@5": recall_at_k(ranked, rel, 5),
        "recall@10": recall_at_k(ranked, rel, 10),
        "mrr": reciprocal_rank(ranked, rel),
        "ndcg@10": ndcg_at_k(ranked, rel, 10),
    }


def mean(scores: Sequence[Mapping[str, float]], names: Sequence[str] = METRICS) -> dict[str, float]:
    """Mean of each named score over questions (macro average: every question weighs the same).

    Raises:
        ValueError: no scores (a mean of nothing would be a misleading 0 or NaN).
    """
    if not scores:
        raise ValueError("no scores to average")
    return {name: sum(s[name] for s in scores) / len(scores) for name in names}


def grouped(items: Sequence[T], key: Callable[[T], str], scores: Callable[[T], Mapping[str, float]],
            names: Sequence[str] = METRICS) -> dict[str, dict[str, float]]:
    """Means per group (e.g. per language or question type), groups sorted by name; each group
    also has ``n``, its number of questions."""
    groups: dict[str, list[Mapping[str, float]]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(scores(item))
    return {g: {"n": len(groups[g]), **mean(groups[g], names)} for g in sorted(groups)}


def paired_bootstrap(a: Sequence[float], b: Sequence[float], rounds: int = 2000, confidence: float = 0.95,
                     seed: int = 0) -> dict[str, float]:
    """How sure a difference of means is: the mean of ``a - b`` over the same questions, with a
    percentile bootstrap confidence interval (questions resampled with replacement, paired).

    Returns:
        ``diff`` (the observed mean difference), ``low`` and ``high`` (the interval's bounds) and
        ``p_not_better`` (share of resamples where ``a`` was not better than ``b``).
    """
    import random

    if len(a) != len(b) or not a:
        raise ValueError("paired samples must be non-empty and of equal length")
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(rounds))
    tail = (1 - confidence) / 2
    return {"diff": sum(diffs) / n, "low": means[int(tail * rounds)], "high": means[min(rounds - 1, int((1 - tail) * rounds))],
            "p_not_better": sum(m <= 0 for m in means) / rounds}


def summarize(records: Sequence[Mapping[str, Any]], mode: str, names: Sequence[str] = METRICS) -> dict[str, Any]:
    """Means of the ``names`` in ``record["scores"][mode]`` overall, per ``record["lang"]``, per
    ``record["type"]`` and, when records carry ``names_code`` (whether the question names a key
    term: a version, code, year or model number), per ``code`` / ``no_code``: the aggregate of
    one mode in a report."""
    def scores(r: Mapping[str, Any]) -> Mapping[str, float]:
        return r["scores"][mode]

    out = {"overall": mean([scores(r) for r in records], names),
           "by_lang": grouped(records, lambda r: r["lang"], scores, names),
           "by_type": grouped(records, lambda r: r["type"], scores, names)}
    if records and all("names_code" in r for r in records):
        out["by_code"] = grouped(records, lambda r: "code" if r["names_code"] else "no_code", scores, names)
    return out
