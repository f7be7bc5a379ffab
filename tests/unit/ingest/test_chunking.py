"""Unit tests of ``deployments.ingest.chunking``: sentence splitting and token-bounded chunks.

Covers: ``sentences`` (English .!?, Chinese 。！？, paragraphs), and ``chunk_text`` properties
over several sizes with a simple token counter (a Han character or a run of other
non-space characters is one token): no chunk over ``max_tokens``, every sentence in some
chunk, neighbouring chunks overlapping by whole sentences within ``overlap_tokens``, long
sentences cut at word boundaries, Chinese joined without spaces, indices 0..n-1, and empty
input. Then: CJK sentence ends and chunk boundaries, the mixed-script join rule, exact overlap
examples, a long Chinese sentence cut without loss, and the max-tokens bound under a
WordPiece-like counter whose tokens do not line up with the cut points.
"""

from __future__ import annotations

import re

import pytest

from deployments.ingest.chunking import Chunk, chunk_text, sentences

_TOKEN = re.compile(r"[\u3400-\u9fff]|[^\s\u3400-\u9fff]+")


def count(text: str) -> int:
    return len(_TOKEN.findall(text))


# Distinct sentences of 4..9 tokens, so a chunk's sentences can be found back by text.
SENTS = [f"Sentence {i} has {'extra ' * (i % 6)}words." for i in range(40)]
TEXT = " ".join(SENTS[:15]) + "\n\n" + " ".join(SENTS[15:])
SIZES = [(16, 0), (16, 6), (24, 8), (40, 12), (64, 30), (200, 32)]


def span(chunk: Chunk) -> list[int]:
    """Indices in SENTS of the sentences a chunk holds (it must be made of whole ones)."""
    return [SENTS.index(s) for s in sentences(chunk.text)]


# --------------------------------------------------------------------------- sentences
def test_sentences_english_and_paragraphs() -> None:
    text = "One is here. Two is there!  Three?\nStill three\n\n  Four is new.\n \nFive"
    expected = ["One is here.", "Two is there!", "Three?", "Still three", "Four is new.", "Five"]
    assert sentences(text) == expected


def test_sentences_chinese_without_spaces() -> None:
    assert sentences("今天天气很好。我们去公园吧！你来吗？好的") == ["今天天气很好。", "我们去公园吧！", "你来吗？", "好的"]


def test_sentences_do_not_split_inside_numbers() -> None:
    assert sentences("It costs 3.5 dollars. Fine.") == ["It costs 3.5 dollars.", "Fine."]


def test_sentences_empty() -> None:
    assert sentences("") == []
    assert sentences("  \n\n \t ") == []


# --------------------------------------------------------------------------- chunk_text
@pytest.mark.parametrize(("max_tokens", "overlap"), SIZES)
def test_chunks_never_exceed_max_tokens(max_tokens: int, overlap: int) -> None:
    chunks = chunk_text(TEXT, max_tokens, overlap, count)
    assert chunks
    assert all(count(c.text) <= max_tokens for c in chunks), [count(c.text) for c in chunks]


@pytest.mark.parametrize(("max_tokens", "overlap"), SIZES)
def test_chunks_cover_every_sentence_in_order(max_tokens: int, overlap: int) -> None:
    chunks = chunk_text(TEXT, max_tokens, overlap, count)
    spans = [span(c) for c in chunks]
    for s in spans:
        assert s == list(range(s[0], s[-1] + 1))  # contiguous whole sentences
    assert sorted({i for s in spans for i in s}) == list(range(len(SENTS)))
    assert spans[0][0] == 0 and spans[-1][-1] == len(SENTS) - 1


@pytest.mark.parametrize(("max_tokens", "overlap"), SIZES)
def test_overlap_is_whole_sentences_within_budget(max_tokens: int, overlap: int) -> None:
    chunks = chunk_text(TEXT, max_tokens, overlap, count)
    spans = [span(c) for c in chunks]
    for prev, nxt in zip(spans, spans[1:]):
        assert nxt[0] <= prev[-1] + 1, "gap between chunks"
        assert nxt[-1] > prev[-1], "a chunk adds nothing new"
        shared = [i for i in nxt if i in prev]
        assert shared == prev[len(prev) - len(shared):]  # a tail of the previous chunk
        if shared:
            assert count(" ".join(SENTS[i] for i in shared)) <= overlap
    if overlap == 0:
        assert all(not set(a) & set(b) for a, b in zip(spans, spans[1:]))


def test_overlap_is_used_when_it_fits() -> None:
    # Every sentence is ≤ 9 tokens: with 12 tokens of overlap each chunk repeats at least one.
    spans = [span(c) for c in chunk_text(TEXT, 40, 12, count)]
    assert len(spans) > 3
    assert all(set(a) & set(b) for a, b in zip(spans, spans[1:]))


def test_long_sentence_is_split_at_word_boundaries() -> None:
    words = [f"w{i}" for i in range(50)]
    chunks = chunk_text(" ".join(words) + ".", max_tokens=16, overlap_tokens=4, count=count)
    assert len(chunks) >= 4
    assert all(count(c.text) <= 16 for c in chunks)
    got = [w.rstrip(".") for c in chunks for w in c.text.split()]
    assert got == words  # no word broken, lost or repeated (pieces overlap by no sentence)


def test_long_sentence_between_short_ones() -> None:
    long = " ".join(f"w{i}" for i in range(30)) + "."
    chunks = chunk_text(f"Short one here. {long} Short two here.", 16, 4, count)
    assert all(count(c.text) <= 16 for c in chunks)
    joined = " ".join(c.text for c in chunks)
    assert "Short one here." in joined and "Short two here." in joined
    assert all(f"w{i}" in joined.split() or f"w{i}." in joined.split() for i in range(30))


def test_chinese_joined_without_spaces() -> None:
    text = "今天天气很好。我们去公园吧！你来吗？"
    assert [c.text for c in chunk_text(text, 50, 5, count)] == [text]
    many = "".join(f"第{i}句话很短。" for i in range(20))  # 7 tokens each
    chunks = chunk_text(many, 20, 7, count)
    assert len(chunks) > 3
    assert all(" " not in c.text and count(c.text) <= 20 for c in chunks)
    assert all(f"第{i}句话很短。" in "".join(c.text for c in chunks) for i in range(20))


def test_mixed_scripts_keep_every_sentence() -> None:
    chunks = chunk_text("这是中文。 This is English. 又是中文。", 100, 0, count)
    assert len(chunks) == 1
    text = chunks[0].text
    assert text.startswith("这是中文。") and text.endswith("This is English. 又是中文。")


def test_long_chinese_sentence_is_cut() -> None:
    text = "长城是中国古代的军事防御工程，全长两万多公里，跨越多个省份和地区，历史非常悠久。"  # 40 tokens
    chunks = chunk_text(text, max_tokens=16, overlap_tokens=4, count=count)
    assert all(count(c.text) <= 16 for c in chunks), [count(c.text) for c in chunks]


@pytest.mark.parametrize(("max_tokens", "overlap"), SIZES)
def test_indices_are_positions(max_tokens: int, overlap: int) -> None:
    chunks = chunk_text(TEXT, max_tokens, overlap, count)
    assert [c.index for c in chunks] == list(range(len(chunks)))


def test_small_text_is_one_chunk_and_empty_is_none() -> None:
    assert chunk_text("Just one sentence.", 16, 4, count) == [Chunk(0, "Just one sentence.")]
    assert chunk_text("", 16, 4, count) == []
    assert chunk_text(" \n\n ", 16, 4, count) == []


# --------------------------------------------------------------------------- more cases
# A WordPiece-like counter, closer to the encoder's tokenizer than ``count``: a Han or kana
# character is one token, an ASCII letter/digit run one token per 4 characters, any other
# non-space character one token. Its pieces do not line up with ``_PIECE``'s cut points.
_REAL = re.compile(r"[\u3040-\u30ff\u3400-\u9fff]|[A-Za-z0-9]+|\S")


def real_count(text: str) -> int:
    return sum(-(-len(t) // 4) if t.isascii() and t.isalnum() else 1 for t in _REAL.findall(text))


def test_sentences_cjk_boundaries() -> None:
    # 。！？； end a sentence (no space needed); the comma ，, the colon ： and a dot in a number
    # do not.
    text = "水泵每年检修一次，费用为3.5万元。阀门呢？每月检查：压力；温度！最后一句"
    assert sentences(text) == [
        "水泵每年检修一次，费用为3.5万元。", "阀门呢？", "每月检查：压力；", "温度！", "最后一句"
    ]


def test_chinese_chunks_end_at_sentence_ends() -> None:
    sents = [f"第{i}号水泵{'很' * (i % 5)}安静。" for i in range(30)]  # 6..10 tokens each
    chunks = chunk_text("".join(sents), 24, 0, count)
    assert len(chunks) > 5
    assert "".join(c.text for c in chunks) == "".join(sents)  # no overlap: a partition, nothing lost
    for c in chunks:
        assert c.text.startswith("第") and c.text.endswith("。") and count(c.text) <= 24


def test_mixed_script_join_rule() -> None:
    # A space between Latin sentences, none after a Chinese one (whatever follows it).
    chunks = chunk_text("Pumps run. 水泵运行。 Valves close. 阀门关闭。", 100, 0, count)
    assert [c.text for c in chunks] == ["Pumps run. 水泵运行。Valves close. 阀门关闭。"]


def test_overlap_repeats_the_previous_tail_exactly() -> None:
    s = ["Alpha one two three.", "Beta one two three.", "Gamma one two three.", "Delta one two three.",
         "Epsilon one two three."]  # 4 tokens each
    chunks = [c.text for c in chunk_text(" ".join(s), 12, 4, count)]
    assert chunks == [" ".join(s[0:3]), " ".join(s[2:5])]
    chunks = [c.text for c in chunk_text(" ".join(s), 12, 8, count)]
    assert chunks == [" ".join(s[0:3]), " ".join(s[1:4]), " ".join(s[2:5])]
    # Overlap smaller than the last sentence: no overlap at all rather than a cut sentence.
    assert [c.text for c in chunk_text(" ".join(s), 12, 3, count)] == [" ".join(s[0:3]), " ".join(s[3:5])]


def test_long_chinese_sentence_is_cut_at_characters_without_loss() -> None:
    text = "长城是中国古代的军事防御工程，全长两万多公里，跨越多个省份和地区，历史非常悠久。"
    chunks = chunk_text(text, 16, 0, count)
    assert len(chunks) == 3 and all(count(c.text) <= 16 for c in chunks)
    assert "".join(c.text for c in chunks) == text


def test_sentence_exactly_max_tokens_is_not_cut() -> None:
    s = " ".join(f"w{i}" for i in range(15)) + "."  # 16 tokens
    assert [c.text for c in chunk_text(f"{s} Next one.", 16, 4, count)] == [s, "Next one."]


MIXED = "\n\n".join([
    TEXT,
    "".join(f"第{i}段说明水泵的维护方法和注意事项。" for i in range(12)),
    "Internationalization and counterrevolutionaries aside, 3.14159 m3/h is the nominal flow; "
    "see section 12.4(b) for the exceptions. " * 4,
    "长城是中国古代的军事防御工程，全长两万多公里，跨越多个省份和地区，历史非常悠久，" * 3 + "。",
])


@pytest.mark.parametrize(("max_tokens", "overlap"), [(16, 0), (16, 4), (32, 8), (64, 16), (128, 32)])
def test_real_ish_counter_never_exceeds_max_tokens(max_tokens: int, overlap: int) -> None:
    chunks = chunk_text(MIXED, max_tokens, overlap, real_count)
    assert all(real_count(c.text) <= max_tokens for c in chunks), [real_count(c.text) for c in chunks]
    joined = " ".join(c.text for c in chunks)
    for word in set(re.findall(r"[A-Za-z0-9]+", MIXED)):
        assert word in joined
    assert set(re.findall(r"[\u3400-\u9fff]", MIXED)) <= set(joined)


@pytest.mark.parametrize("text", [
    "See https://example.com/" + "a" * 120 + " for details.",
    "これはとてもながいぶんしょうでくぎりがまったくないのでわたしたちはこまってしまうのです。",
], ids=["url", "kana"])
def test_unbroken_run_longer_than_a_chunk_is_cut(text: str) -> None:
    chunks = chunk_text(text, 16, 4, real_count)
    assert all(real_count(c.text) <= 16 for c in chunks), [real_count(c.text) for c in chunks]
