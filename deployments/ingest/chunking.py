"""Split documents into overlapping, token-bounded chunks along paragraph and sentence lines.

Token counts come from a callable (the encoder's own tokenizer in production), so a chunk
never exceeds what the encoder will read. Packing is greedy by sentence; a sentence longer
than a chunk is cut at word boundaries (characters for Chinese).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_PARAGRAPH = re.compile(r"\n\s*\n")
# End of a sentence: Latin punctuation followed by space, or CJK full stops (no space needed).
_SENTENCE = re.compile(r"(?<=[.!?;])\s+|(?<=[。！？；])")
# Cut points inside an over-long sentence: each Han character, or a non-Han word with its space.
_PIECE = re.compile(r"[\u3400-\u9fff]|[^\s\u3400-\u9fff]+\s*")


@dataclass(frozen=True)
class Chunk:
    """One chunk: its position in the document and its text."""

    index: int
    text: str


def sentences(text: str) -> list[str]:
    """Sentences of ``text``, paragraph by paragraph, whitespace-trimmed, empties dropped."""
    out: list[str] = []
    for para in _PARAGRAPH.split(text):
        out.extend(s.strip() for s in _SENTENCE.split(para.strip()) if s.strip())
    return out


def _split_long(sentence: str, max_tokens: int, count: Callable[[str], int]) -> list[str]:
    pieces, cur = [], ""
    for piece in _pieces(sentence, max_tokens, count):
        if cur and count(cur + piece) > max_tokens:
            pieces.append(cur.strip())
            cur = ""
        cur += piece
    if cur.strip():
        pieces.append(cur.strip())
    return pieces


def _pieces(sentence: str, max_tokens: int, count: Callable[[str], int]) -> list[str]:
    # Words (Han characters) in order; one longer than a chunk by itself (a URL, a run of kana)
    # is cut into characters, so that no chunk is ever over the limit.
    out: list[str] = []
    for piece in _PIECE.findall(sentence):
        out.extend(piece if count(piece) > max_tokens else [piece])
    return out


def _join(parts: list[str]) -> str:
    # Chinese sentences are joined without spaces, others with one.
    out = ""
    for p in parts:
        out += p if (not out or "\u3400" <= out[-1] <= "\u9fff" or out[-1] in "。！？；") else " " + p
    return out


def chunk_text(text: str, max_tokens: int, overlap_tokens: int, count: Callable[[str], int]) -> list[Chunk]:
    """Chunks of at most ``max_tokens``, each starting with up to ``overlap_tokens`` of the
    previous chunk's last sentences.

    Args:
        text: the document text.
        max_tokens: most tokens in one chunk.
        overlap_tokens: tokens of context repeated from the previous chunk (whole sentences).
        count: token counter (e.g. the encoder tokenizer's length).
    """
    units: list[str] = []
    for s in sentences(text):
        units.extend(_split_long(s, max_tokens, count) if count(s) > max_tokens else [s])
    chunks: list[list[str]] = []
    cur: list[str] = []
    for u in units:
        if cur and count(_join(cur + [u])) > max_tokens:
            chunks.append(cur)
            cur = _overlap(cur, overlap_tokens, count)
            while cur and count(_join(cur + [u])) > max_tokens:
                cur = cur[1:]
        cur.append(u)
    if cur:
        chunks.append(cur)
    return [Chunk(i, _join(c)) for i, c in enumerate(chunks)]


def _overlap(prev: list[str], overlap_tokens: int, count: Callable[[str], int]) -> list[str]:
    tail: list[str] = []
    for s in reversed(prev):
        if count(_join([s, *tail])) > overlap_tokens:
            break
        tail.insert(0, s)
    return tail
