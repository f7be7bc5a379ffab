"""Unit tests of ``deployments.search.precision``: the exact-term bonus and the newest-first
tie-break that reorder fused hybrid candidates (pure Python, no Milvus)."""

from __future__ import annotations

import pytest

from deployments.config import PrecisionConfig, PreprocessConfig
from deployments.preprocess.text import document_lexical, prepare_query
from deployments.protocol.stages import Hit
from deployments.search.precision import (
    duplicate_groups,
    exact_term_order,
    jaccard,
    newest_first,
    reorder,
    term_share,
)

K = 60


def hit(doc: str, text: str, title: str = "", created_at: int = 0, score: float = 0.0) -> Hit:
    return Hit(id=f"{doc}#0", doc_id=doc, source=doc, title=title, chunk_index=0, text=text, score=score,
               created_at=created_at, updated_at=created_at)


OLD = hit("r340", "Release 3.4.0 of the LC-800 firmware adds role-based accounts and raises the limit of "
          "Modbus TCP connections from 8 to 16; the first start after the upgrade migrates the accounts.",
          title="LC-800 firmware 3.4.0 release notes")
NEW = hit("r341", "Patch 3.4.1 repairs the clock jump at the daylight-saving change.",
          title="LC-800 firmware 3.4.1 release notes")


def test_the_named_version_ranks_above_its_lexically_closer_twin() -> None:
    """The issue's case: a question naming 3.4.1 whose other words fit the 3.4.0 notes better."""
    q = prepare_query("Which LC-800 firmware release raises the Modbus TCP connections limit, 3.4.1?",
                      PreprocessConfig())
    shared = {h.doc_id: len(set(q.tokens) & set(document_lexical(f"{h.title} {h.text}", PreprocessConfig()).split()))
              for h in (OLD, NEW)}
    assert shared["r340"] > shared["r341"]  # lexically, 3.4.0 is the closer passage ...
    ranked = reorder([OLD, NEW], q.key_terms, PrecisionConfig(), K)  # ... and fusion put it first
    assert [h.doc_id for h in ranked] == ["r341", "r340"]
    assert ranked[0].score > ranked[1].score


def test_term_share_counts_title_and_text() -> None:
    assert term_share(("lc800", "3.4.1"), NEW) == 1.0
    assert term_share(("lc800", "3.4.1"), OLD) == 0.5
    assert term_share((), NEW) == 0.0


def test_a_partial_match_lifts_less_than_a_full_one() -> None:
    a = hit("a", "KT-4410-B seal kit for the VX-240")
    b = hit("b", "KT-4410-C seal kit for the VX-220")
    c = hit("c", "KT-4410-C seal kit for the VX-240")
    ranked = exact_term_order([a, b, c], ("kt4410c", "vx240"), 1.0, K)
    assert [h.doc_id for h in ranked] == ["c", "a", "b"]  # a and b tie on 1/2: fused order between them


def test_a_small_weight_lifts_only_a_few_ranks() -> None:
    hits = [hit(f"d{i}", "nothing here") for i in range(9)] + [hit("m", "HX-420")]
    assert exact_term_order(hits, ("hx420",), 1.0, K)[0].doc_id == "m"
    small = [h.doc_id for h in exact_term_order(hits, ("hx420",), 0.05, K)]
    assert small.index("m") not in (0, 9)  # moved up, not to the top


@pytest.mark.parametrize(("terms", "weight"), [((), 1.0), (("hx420",), 0.0)])
def test_no_terms_or_no_weight_keeps_the_fused_order(terms: tuple[str, ...], weight: float) -> None:
    hits = [hit("a", "x", score=0.5), hit("b", "HX-420", score=0.4)]
    assert exact_term_order(hits, terms, weight, K) == hits


def test_scores_stay_in_the_returned_order() -> None:
    hits = [hit(str(i), "HX-420" if i % 3 == 0 else "other") for i in range(12)]
    scores = [h.score for h in exact_term_order(hits, ("hx420",), 0.3, K)]
    assert scores == sorted(scores, reverse=True)


REV = "Employees may claim up to {n} euros a night for hotels on business trips within Europe, receipts attached."


def test_revisions_group_and_siblings_do_not() -> None:
    a, b = hit("a", REV.format(n=120)), hit("b", REV.format(n=140))
    other = hit("c", "The VX-220 pump delivers 38 m3/h at a head of 42 metres.")
    assert jaccard(frozenset({"x"}), frozenset()) == 0.0
    assert duplicate_groups([a, other, b], 0.7) == [[0, 2], [1]]
    assert duplicate_groups([a, other, b], 1.0) == [[0], [1], [2]]


def test_newest_first_keeps_the_group_on_its_ranks() -> None:
    old = hit("old", REV.format(n=120), created_at=1_600_000_000, score=0.9)
    mid = hit("x", "unrelated passage about meeting rooms", created_at=1_800_000_000, score=0.8)
    new = hit("new", REV.format(n=140), created_at=1_700_000_000, score=0.7)
    ranked = newest_first([old, mid, new], 0.7, "created_at")
    assert [h.doc_id for h in ranked] == ["new", "x", "old"]
    assert [h.score for h in ranked] == [0.9, 0.8, 0.7]


def test_reorder_applies_newest_first_only_without_key_terms() -> None:
    old = hit("old", REV.format(n=120) + " Policy of 2022.", created_at=1_600_000_000)
    new = hit("new", REV.format(n=140) + " Policy of 2024.", created_at=1_700_000_000)
    cfg = PrecisionConfig(prefer_newest="created_at")
    assert [h.doc_id for h in reorder([old, new], (), cfg, K)] == ["new", "old"]
    assert [h.doc_id for h in reorder([old, new], ("2022",), cfg, K)] == ["old", "new"]  # asked for 2022
    off = PrecisionConfig(prefer_newest="off")
    assert [h.doc_id for h in reorder([old, new], (), off, K)] == ["old", "new"]
    assert PrecisionConfig().prefer_newest == "created_at"  # on by default: it measured better


def test_exact_terms_off_keeps_the_fused_order() -> None:
    assert reorder([OLD, NEW], ("3.4.1",), PrecisionConfig(exact_terms=False), K) == [OLD, NEW]


def test_siblings_below_the_threshold_keep_their_order() -> None:
    """Pages of two products on one error code are alike but not revisions: not reordered by date."""
    a = hit("hx420", "On the HX-420 error E-17 means the brine sensor fails; check terminal X4.", created_at=1)
    b = hit("hx430", "On the HX-430 error E-17 means the brine sensor fails after a delay; check X6.", created_at=2)
    assert jaccard(frozenset(a.text.casefold().split()), frozenset(b.text.casefold().split())) < 0.8
    assert [h.doc_id for h in reorder([a, b], (), PrecisionConfig(), K)] == ["hx420", "hx430"]
