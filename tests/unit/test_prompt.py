"""Unit tests of ``deployments.generator.prompt``: the RAG prompt and citations read back.

Covers: ``format_sources`` (numbering from 1, title prefix, whitespace collapsed, passages cut
to ``passage_chars`` with `` ...``), ``user_turn`` without hits, ``rag_messages`` (ragserve's
system prompt first with a client's system messages appended, history kept in order, the last
turn carrying sources and question), ``cited_sources`` (groups, repeats, out-of-range numbers,
first-cited order) and ``grounding`` with the real lexical analyser (English and Chinese).
"""

from __future__ import annotations

import pytest

from deployments.config import PreprocessConfig
from deployments.generator.prompt import cited_sources, format_sources, grounding, rag_messages, user_turn
from deployments.preprocess.text import normalize, tokenize
from deployments.protocol.stages import Hit
from deployments.protocol.types import ChatMessage

CFG = PreprocessConfig()


def tok(text: str) -> list[str]:
    return tokenize(normalize(text), CFG)


def hit(text: str, title: str = "", n: int = 0) -> Hit:
    return Hit(
        id=f"c{n}", doc_id=f"d{n}", source=f"docs/{n}.md", title=title, chunk_index=0, text=text, score=1.0
    )


# --------------------------------------------------------------------------- sources
def test_format_sources_numbers_from_one_with_titles() -> None:
    out = format_sources([hit("alpha text", "Alpha"), hit("beta text")], passage_chars=100)
    assert out.split("\n") == ["[1] Alpha: alpha text", "[2] beta text"]


def test_format_sources_collapses_whitespace() -> None:
    out = format_sources([hit("  one\n\ntwo\t three  ", "T")], passage_chars=100)
    assert out == "[1] T: one two three"


def test_format_sources_cuts_long_passages() -> None:
    text = "word " * 50
    assert format_sources([hit(text)], passage_chars=10) == "[1] word word ..."  # trailing space stripped
    assert format_sources([hit(text)], passage_chars=7) == "[1] word wo ..."  # a plain character cut
    assert format_sources([hit("exactly12chr")], passage_chars=12) == "[1] exactly12chr"


def test_user_turn_without_hits_says_so() -> None:
    out = user_turn("What is X?", [], passage_chars=100)
    assert "no sources" in out
    assert out.endswith("Question: What is X?")
    assert "[1]" not in out


def test_user_turn_with_hits_holds_sources_then_question() -> None:
    out = user_turn("What is X?", [hit("X is a pump.", "Pumps")], passage_chars=100)
    assert out.index("[1] Pumps: X is a pump.") < out.index("Question: What is X?")


# --------------------------------------------------------------------------- messages
def test_rag_messages_order_and_system_merge() -> None:
    history = [
        ChatMessage(role="system", content="Answer in French."),
        ChatMessage(role="user", content="hi"),
        ChatMessage(role="assistant", content="hello"),
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content="and then?"),
    ]
    msgs = rag_messages("RAGSERVE RULES", "What is X?", [hit("X is a pump.")], 100, history)
    assert msgs[0].role == "system"
    assert msgs[0].content == "RAGSERVE RULES\n\nAnswer in French.\n\nBe brief."
    middle = [(m.role, m.content) for m in msgs[1:-1]]
    assert middle == [("user", "hi"), ("assistant", "hello"), ("user", "and then?")]
    assert sum(m.role == "system" for m in msgs) == 1
    last = msgs[-1]
    assert last.role == "user"
    assert "[1] X is a pump." in last.content and last.content.endswith("Question: What is X?")


def test_rag_messages_without_history() -> None:
    msgs = rag_messages("RULES", "Q?", [], 100)
    assert [m.role for m in msgs] == ["system", "user"]
    assert msgs[0].content == "RULES"


# --------------------------------------------------------------------------- citations
@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("X is a pump [1].", [1]),
        ("X is a pump [1, 3].", [1, 3]),
        ("A [2]. B [2]. C [2,2].", [2]),
        ("Made up [7] and [0] and [4].", [4]),
        ("First [3], then [1], then [3] and [2].", [3, 1, 2]),
        ("No citations here.", []),
        ("Not a citation: [a] or [ ] or (1).", []),
    ],
)
def test_cited_sources(answer: str, expected: list[int]) -> None:
    assert cited_sources(answer, n_sources=4) == expected


# --------------------------------------------------------------------------- grounding
SOURCES = [
    hit("Pandas live in the mountains of Sichuan and eat bamboo.", n=1),
    hit("The E-4471 pump runs at 240 volts and needs a yearly service.", n=2),
    hit("Chapter 1 and 3 describe the harbour.", n=3),
]


def test_grounding_finds_copied_sentence() -> None:
    answer = "The E-4471 pump runs at 240 volts."
    assert grounding(answer, SOURCES, tok) == [2]


def test_grounding_ignores_unrelated_sentence() -> None:
    assert grounding("Quantum chromodynamics describes gluon interactions.", SOURCES, tok) == []


def test_grounding_several_sentences_in_first_found_order() -> None:
    answer = "The pump needs a yearly service. Pandas eat bamboo in Sichuan. The pump runs at 240 volts."
    assert grounding(answer, SOURCES, tok) == [2, 1]


def test_grounding_ignores_citation_markers() -> None:
    # Without stripping "[1, 3]" the tokens {chapter, 1, 3} would all be in source 3.
    assert grounding("Chapter [1, 3].", SOURCES, tok) == []


def test_grounding_ignores_sentences_with_fewer_than_two_tokens() -> None:
    assert grounding("The bamboo.", SOURCES, tok) == []  # one content token: "bamboo"
    assert grounding("Bamboo pandas.", SOURCES, tok) == [1]  # two are enough


def test_grounding_chinese() -> None:
    zh = [hit("熊猫主要吃竹子。", n=1), hit("长城是中国古代的军事防御工程，全长两万多公里。", n=2)]
    assert grounding("长城是古代的军事防御工程。", zh, tok) == [2]
    assert grounding("今天股票市场大幅上涨。", zh, tok) == []


def test_grounding_without_hits() -> None:
    assert grounding("The pump runs at 240 volts.", [], tok) == []
