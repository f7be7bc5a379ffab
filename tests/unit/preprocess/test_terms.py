"""Unit tests of ``deployments.preprocess.terms``: which identifiers, versions, years and model
numbers a text names, and the canonical form questions and passages share."""

from __future__ import annotations

import pytest

from deployments.config import PreprocessConfig
from deployments.preprocess.terms import canonical, key_terms
from deployments.preprocess.text import prepare_query


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Which changes came with 3.4.1?", ("3.4.1",)),
        ("Upgrade from v3.4.0 to version 3.4.1.", ("3.4.0", "3.4.1")),  # leading v, sentence dot
        ("HX-420 or HX-430?", ("hx420", "hx430")),
        ("seal kit KT-4410-C for the VX-240", ("kt4410c", "vx240")),
        ("the 2022 policy, revised 2024-02-06", ("2022", "2024")),  # a year alone or in a date
        ("error E4471 on x86_64", ("e4471", "x8664")),
        ("TLS 1.3 and a 7.5 m lift", ("1.3", "7.5")),
        ("at 8 bar for 30 days, 2,900 rpm", ()),  # plain integers are not key terms
        ("", ()),
        ("ＨＸ－４２０", ("hx420",)),  # full width folds to ASCII
        ("LC-800 固件3.4.1发布说明", ("lc800", "3.4.1")),  # Han characters end a run
        ("3.4.1 and again 3.4.1", ("3.4.1",)),
    ],
)
def test_key_terms(text: str, expected: tuple[str, ...]) -> None:
    assert key_terms(text) == expected


def test_near_misses_are_different_terms() -> None:
    """The point of whole-term matching: twins differ where BM25's tokens would not."""
    assert key_terms("3.4.0") != key_terms("3.4.1")
    assert key_terms("3.4.1") != key_terms("3.4.10")
    assert key_terms("HX-420") != key_terms("HX-420B")
    assert not set(key_terms("the 2022 edition")) & set(key_terms("the 2024 edition"))


def test_spellings_of_one_term_agree() -> None:
    assert canonical("HX-420") == canonical("hx420") == canonical("HX_420")
    assert canonical("v3.4.1") == canonical("3.4.1")
    assert canonical("v2") == "v2"  # a "v" that starts no dotted version is part of the code


def test_prepare_query_carries_the_key_terms() -> None:
    q = prepare_query("What does Pulse 4.4.1 fix?", PreprocessConfig())
    assert q.key_terms == ("4.4.1",)
    assert prepare_query("How do I reset my password?", PreprocessConfig()).key_terms == ()
