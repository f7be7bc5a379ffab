"""Unit tests of ``deployments.preprocess.text``: the one lexical analyser of queries and documents.

Covers: ``normalize`` (NFKC, control characters, whitespace), ``tokenize`` for English
(stopwords, Snowball stems, codes kept), Chinese (jieba words, stopwords) and mixed text,
``language``, ``prepare_query`` limits and errors, and ``document_lexical``.
"""

from __future__ import annotations

import pytest

from deployments.config import PreprocessConfig
from deployments.errors import InvalidRequestError, PayloadTooLargeError
from deployments.preprocess.text import document_lexical, language, normalize, prepare_query, tokenize

CFG = PreprocessConfig()


def toks(text: str, cfg: PreprocessConfig = CFG) -> list[str]:
    return tokenize(normalize(text), cfg)


# --------------------------------------------------------------------------- normalize
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Ｅ－４４７１　ＡＢＣ", "E-4471 ABC"),  # full-width letters, digits, hyphen, ideographic space
        ("ﬁle №５", "file No5"),  # compatibility ligature and numero sign
        ("a\x00b\x07c\x1fd\x7fe", "a b c d e"),  # C0 controls and DEL become spaces
        ("  many \t\n\r  spaces\u00a0here  ", "many spaces here"),
        ("", ""),
    ],
)
def test_normalize(raw: str, expected: str) -> None:
    assert normalize(raw) == expected


def test_nfc_keeps_compatibility_characters() -> None:
    assert normalize("ＡＢＣ", "NFC") == "ＡＢＣ"
    assert normalize("e\u0301", "NFC") == "\u00e9"



def test_normalize_removes_c1_controls() -> None:
    assert normalize("pump\x9b\x80 pressure") == "pump pressure"


# --------------------------------------------------------------------------- tokenize: English
def test_english_stopwords_removed_case_folded_and_stemmed() -> None:
    assert toks("running pumps") == ["run", "pump"]
    assert toks("What is the maximum pressure of the pumps?") == ["maximum", "pressur", "pump"]
    assert toks("the of and is") == []
    assert toks("VERDANT Loop") == toks("verdant loop") == ["verdant", "loop"]  # case-folded


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("x86_64", ["x86_64"]),
        ("E-4471 errors", ["e", "4471", "error"]),  # \w+ runs: the hyphen splits, digits kept
        ("e4471", ["e4471"]),
        ("VLK-220 kits", ["vlk", "220", "kit"]),
        ("QM104", ["qm104"]),
    ],
)
def test_codes_are_kept_not_stemmed(text: str, expected: list[str]) -> None:
    assert toks(text) == expected


def test_short_words_are_not_stemmed() -> None:
    # Snowball would turn "ads" into "ad"; words of <= 3 letters are kept as written.
    assert toks("ads ties") == ["ads", "tie"]


def test_switches_turn_steps_off() -> None:
    cfg = PreprocessConfig(lowercase=False, remove_stopwords=False, stem=False)
    assert toks("The Running pumps", cfg) == ["The", "Running", "pumps"]
    assert toks("The running pumps", PreprocessConfig(remove_stopwords=False)) == ["the", "run", "pump"]
    assert toks("The running pumps", PreprocessConfig(stem=False)) == ["running", "pumps"]


# --------------------------------------------------------------------------- tokenize: Chinese
def test_chinese_is_segmented_into_words() -> None:
    tokens = toks("茶园的门票多少钱")
    assert "茶园" in tokens and "门票" in tokens
    assert "的" not in tokens and "多少" not in tokens


def test_chinese_search_mode_adds_subwords() -> None:
    tokens = toks("中华人民共和国")
    assert {"中华人民共和国", "人民", "共和国"} <= set(tokens)


def test_chinese_stopwords_removed() -> None:
    assert toks("请问这个是什么") == []
    tokens = toks("请问地铁的起步价是多少")
    assert "地铁" in tokens and "的" not in tokens


def test_mixed_text_space_separated() -> None:
    tokens = toks("Verdant Loop 水泵的压力 running")
    assert tokens[:2] == ["verdant", "loop"]
    assert "水泵" in tokens and "压力" in tokens and "的" not in tokens
    assert tokens[-1] == "run"


@pytest.mark.parametrize(
    ("text", "present", "absent"),
    [
        ("X200的价格", ["x200", "价格"], ["的", "x200的价格"]),
        ("2024年3月的票价", ["票价"], ["的"]),
        ("Verdant水泵", ["verdant", "水泵"], ["verdant水泵"]),
    ],
)
def test_han_run_adjacent_to_latin_is_segmented(text: str, present: list[str], absent: list[str]) -> None:
    tokens = toks(text)
    assert all(t in tokens for t in present), tokens
    assert not any(t in tokens for t in absent), tokens


# --------------------------------------------------------------------------- language
@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("What is the pump pressure?", "en"),
        ("E-4471 123", "en"),
        ("茶园的门票多少钱", "zh"),
        ("翠岚坪 tea garden visitor guide", "mixed"),
        ("Verdant Loop 的水泵压力是多少", "zh"),
    ],
)
def test_language(text: str, lang: str) -> None:
    assert language(text) == lang


# --------------------------------------------------------------------------- prepare_query
def test_prepare_query() -> None:
    q = prepare_query("  What is the maximum   pressure of running pumps?\n", CFG)
    assert q.text == "What is the maximum pressure of running pumps?"
    assert q.tokens == ("maximum", "pressur", "run", "pump")
    assert q.language == "en"
    assert q.lexical_text == "maximum pressur run pump"


def test_too_long_question_is_413() -> None:
    cfg = PreprocessConfig(max_query_chars=10)
    prepare_query("x" * 10, cfg)
    with pytest.raises(PayloadTooLargeError) as exc:
        prepare_query("x" * 11, cfg)
    assert exc.value.status == 413
    assert exc.value.param == "question"
    assert "10" in exc.value.message


@pytest.mark.parametrize("question", ["", "   ", "\n\t \r", "\x00\x01\x1f", "\u3000\u00a0"])
def test_empty_question_is_400(question: str) -> None:
    with pytest.raises(InvalidRequestError) as exc:
        prepare_query(question, CFG)
    assert not isinstance(exc.value, PayloadTooLargeError)
    assert exc.value.status == 400
    assert exc.value.param == "question"



def test_c1_control_only_question_is_400() -> None:
    with pytest.raises(InvalidRequestError):
        prepare_query("\x9b\x80", CFG)


def test_stopword_only_question_is_accepted_with_no_tokens() -> None:
    q = prepare_query("what is the", CFG)
    assert q.tokens == () and q.text == "what is the"


def test_max_query_tokens_truncates() -> None:
    cfg = PreprocessConfig(max_query_tokens=3)
    q = prepare_query("alpha bravo charlie delta echo", cfg)
    assert q.tokens == ("alpha", "bravo", "charli")
    assert q.text == "alpha bravo charlie delta echo"  # the dense side keeps the whole question


# --------------------------------------------------------------------------- document_lexical
@pytest.mark.parametrize(
    "text",
    [
        "The Picker-7 arm has a reach of 142 centimetres.",
        "翠岚坪茶园的门票为每人45元。",
        "Ｅ－４４７１: 校验和不匹配 checksum",
    ],
)
def test_document_lexical_matches_query_tokens(text: str) -> None:
    assert document_lexical(text, CFG) == " ".join(tokenize(normalize(text), CFG))
    assert document_lexical(text, CFG) == prepare_query(text, CFG).lexical_text
