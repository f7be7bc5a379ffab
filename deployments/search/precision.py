"""Precision at rank 1 among near-duplicates: a reordering of the fused hybrid candidates.

Fusion (RRF over dense and BM25) finds the right passage among the first five almost always, but
real corpora hold twins (3.4.0 and 3.4.1 release notes, one error code on two controllers) that
both retrievers score alike, because neither compares an identifier whole (see
:mod:`deployments.preprocess.terms`). Two features reorder the candidates, both pure Python:

- exact terms: a candidate gains a bonus for the share of the question's key terms it names
  (title or text), on a rank scale so it works after either ranker;
- newest first: when the question names no key term, each group of near-duplicate candidates
  (word-set Jaccard at or above a threshold) is ordered newest first within the ranks it holds.

There is no penalty for a near miss on its own: the twin that names ``3.4.0`` simply lacks the
bonus that the one naming ``3.4.1`` gets, and a passage naming both (release notes that mention
the version they fix) is not pushed below one naming neither.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from deployments.config import PrecisionConfig
from deployments.preprocess.terms import key_terms
from deployments.protocol.stages import Hit

_WORD = re.compile(r"\w+", re.UNICODE)


def term_share(terms: Sequence[str], hit: Hit) -> float:
    """Share of ``terms`` (canonical key terms) that ``hit`` names in its title or text."""
    if not terms:
        return 0.0
    named = set(key_terms(f"{hit.title}\n{hit.text}"))
    return sum(t in named for t in terms) / len(terms)


def exact_term_order(hits: Sequence[Hit], terms: Sequence[str], weight: float, rank_k: int) -> list[Hit]:
    """``hits`` (fused order, best first) rescored by rank and key-term share, best first.

    A hit at fused rank r scores ``1/(rank_k + r) + weight * share / (rank_k + 1)``; the new
    score replaces the fused one, so scores stay in the order they are returned. Ties keep the
    fused order. Without terms (or with weight 0) the order is unchanged.
    """
    if not terms or weight == 0 or not hits:
        return list(hits)
    top = 1.0 / (rank_k + 1)
    scored = [(1.0 / (rank_k + r) + weight * top * term_share(terms, h), r, h) for r, h in enumerate(hits, start=1)]
    scored.sort(key=lambda s: (-s[0], s[1]))
    return [h.model_copy(update={"score": s}) for s, _, h in scored]


def _words(hit: Hit) -> frozenset[str]:
    return frozenset(w.casefold() for w in _WORD.findall(f"{hit.title} {hit.text}"))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """|a ∩ b| / |a ∪ b| (0 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def duplicate_groups(hits: Sequence[Hit], threshold: float) -> list[list[int]]:
    """Indices of ``hits`` grouped by near-duplication, each group in rank order.

    Greedy single pass: a hit joins the first group whose first member it resembles at
    ``threshold`` or more, else starts a group. Comparing with the group's first (best) member
    only keeps a chain of slowly drifting texts from merging into one group.
    """
    words = [_words(h) for h in hits]
    groups: list[list[int]] = []
    for i in range(len(hits)):
        for g in groups:
            if jaccard(words[g[0]], words[i]) >= threshold:
                g.append(i)
                break
        else:
            groups.append([i])
    return groups


def newest_first(hits: Sequence[Hit], threshold: float, field: str) -> list[Hit]:
    """Within each near-duplicate group, members ordered newest first (by ``field``: created_at
    or updated_at; a later timestamp is newer, ties keep rank order) on the ranks the group holds.
    Scores move with their rank, so they stay in order."""
    out = list(hits)
    for group in duplicate_groups(hits, threshold):
        if len(group) < 2:
            continue
        members = sorted(group, key=lambda i: (-getattr(hits[i], field), i))
        for slot, member in zip(group, members, strict=True):
            out[slot] = hits[member].model_copy(update={"score": hits[slot].score})
    return out


def applies(mode: str, cfg: PrecisionConfig) -> bool:
    """Whether a request of ``mode`` is reordered: hybrid ones, when a feature is on (else hybrid
    results are the fusion's, as they come; dense and lexical stay the plain retrievers)."""
    return mode == "hybrid" and ((cfg.exact_terms and cfg.exact_term_weight > 0) or cfg.prefer_newest != "off")


def reorder(hits: Sequence[Hit], terms: Sequence[str], cfg: PrecisionConfig, rank_k: int) -> list[Hit]:
    """Both features as configured, on fused candidates best first; returns them best first."""
    out = exact_term_order(hits, terms, cfg.exact_term_weight, rank_k) if cfg.exact_terms else list(hits)
    if cfg.prefer_newest != "off" and not terms:
        out = newest_first(out, cfg.duplicate_similarity, cfg.prefer_newest)
    return out
