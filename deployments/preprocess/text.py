"""Text analysis shared by queries (preprocess stage) and documents (ingestion).

Both sides of the BM25 index must be tokenised identically, so this module is the only place
that decides what a lexical token is: Unicode-normalised, case-folded ``\\w+`` runs for
alphabetic scripts (Snowball-stemmed), jieba search-mode segmentation
(words and their sub-words) for runs of Han characters, and
stopwords removed. Everything here is pure Python and fast; jieba's dictionary loads once per
process on first use (~1 s), so replicas call :func:`warm_up` at start.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Literal

from deployments.config import PreprocessConfig
from deployments.errors import InvalidRequestError, PayloadTooLargeError
from deployments.preprocess import stopwords, terms
from deployments.protocol.stages import PreparedQuery

_HAN = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_HAN_RUN = re.compile(f"[{_HAN}]+")
# A word character that is not Han: Han runs go to jieba, so "X200的价格" splits at the script change.
_WORD_CH = f"(?:(?![{_HAN}])[^\\W_])"
_SEGMENTS = re.compile(f"([{_HAN}]+)|({_WORD_CH}+(?:_{_WORD_CH}+)*)", re.UNICODE)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # C0 and C1 controls
_ZERO_WIDTH = re.compile("[\u200b-\u200d\u2060\ufeff]")  # invisible: must not split a word
_SPACES = re.compile(r"\s+")


def normalize(text: str, form: Literal["NFC", "NFKC"] = "NFKC") -> str:
    """Unicode-normalise, drop control characters and collapse whitespace."""
    text = unicodedata.normalize(form, text)
    text = _ZERO_WIDTH.sub("", _CONTROL.sub(" ", text))
    return _SPACES.sub(" ", text).strip()


@lru_cache(maxsize=1)
def _jieba():
    import jieba

    jieba.setLogLevel(60)  # silence its start-up chatter
    jieba.initialize()
    return jieba


@lru_cache(maxsize=1)
def _stemmer():
    import snowballstemmer

    return snowballstemmer.stemmer("english")


def warm_up() -> None:
    """Load jieba's dictionary and the stemmer now rather than on the first request."""
    _jieba()
    _stemmer()


def tokenize(text: str, cfg: PreprocessConfig) -> list[str]:
    """Lexical tokens of already-normalised ``text`` (stopwords removed, English stemmed)."""
    out: list[str] = []
    for han, word in _SEGMENTS.findall(text):
        if han:
            out.extend(t for t in _jieba().lcut_for_search(han) if t.strip())
        else:
            out.append(word.casefold() if cfg.lowercase else word)
    if cfg.remove_stopwords:
        out = [t for t in out if t.casefold() not in stopwords.ALL]
    if cfg.stem:
        out = [_stem(t) for t in out]
    return out


def _stem(token: str) -> str:
    # Only plain alphabetic words: codes like "e4471" or "x86_64" must match exactly.
    if token.isascii() and token.isalpha() and len(token) > 3:
        return _stemmer().stemWord(token)
    return token


def language(text: str) -> Literal["en", "zh", "mixed"]:
    """Dominant script: Han characters vs other letters."""
    han = sum(len(m) for m in _HAN_RUN.findall(text))
    other = sum(ch.isalpha() for ch in text) - han
    if han == 0:
        return "en"
    # A Han character carries about as much as a short English word: weigh letters by 1/4.
    return "zh" if han >= other / 4 else "mixed"


def prepare_query(question: str, cfg: PreprocessConfig) -> PreparedQuery:
    """Validate and analyse one question.

    Raises:
        InvalidRequestError: the question is empty after normalisation.
        PayloadTooLargeError: the question is longer than ``max_query_chars``.
    """
    if len(question) > cfg.max_query_chars:
        raise PayloadTooLargeError(
            f"question is {len(question)} characters; the limit is {cfg.max_query_chars}", param="question"
        )
    text = normalize(question, cfg.unicode_form)
    if not text:
        raise InvalidRequestError("question is empty", param="question")
    tokens = tokenize(text, cfg)[: cfg.max_query_tokens]
    return PreparedQuery(text=text, tokens=tuple(tokens), language=language(text),
                         key_terms=terms.key_terms(text))


def document_lexical(text: str, cfg: PreprocessConfig) -> str:
    """The ``lexical`` field stored with a chunk: its tokens joined by spaces."""
    return " ".join(tokenize(normalize(text, cfg.unicode_form), cfg))
