"""Fitting a prompt into the model's context window, counted in the model's own tokens.

The server's own retrieval must never make a valid question fail: retrieved passages are
budgeted, best first, into what the context leaves after the completion's tokens and the
user's own text. The first passage that does not fit whole is cut to the room left (when that
is at least :data:`MIN_TRIMMED_TOKENS`), the ones after it are dropped, and the result says
which went in. Only the caller's own input can be rejected (400), naming the caller's field:
their question or messages when those alone exceed the context, their ``max_tokens`` when a
smaller one would fit. A server-default ``max_tokens`` is lowered instead (to at least
:data:`MIN_COMPLETION_TOKENS`).

Token counts come from a :class:`Tokens` (the engine's tokenizer in the generator replica; a
fake in unit tests). Passage lines are counted one by one, then the whole templated prompt is
counted once more and the last passage cut further if the joins cost a token or two more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from deployments.errors import InvalidRequestError
from deployments.generator import prompt
from deployments.protocol.stages import PackedContext, RagPrompt, SamplingParams
from deployments.protocol.types import ChatMessage

#: A passage cut to fewer tokens than this is dropped instead (a stub helps no answer).
MIN_TRIMMED_TOKENS = 32
#: A server-default max_tokens is never lowered below this.
MIN_COMPLETION_TOKENS = 16
TRIM_MARK = " ..."


class Tokens(Protocol):
    """Token counting with the engine's tokenizer."""

    def count(self, text: str) -> int:
        """Tokens of a piece of text (no special tokens)."""

    def truncate(self, text: str, n_tokens: int) -> str:
        """The longest prefix of ``text`` of at most ``n_tokens`` tokens."""

    def count_prompt(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens of the messages with the chat template applied (generation prompt included)."""


@dataclass(frozen=True)
class Packed:
    messages: tuple[ChatMessage, ...]
    max_tokens: int
    context: PackedContext | None  # None for a prompt without retrieval


def completion_budget(prompt_tokens: int, sampling: SamplingParams, context_len: int, prompt_param: str) -> int:
    """The completion tokens to reserve next to a prompt of ``prompt_tokens`` (the user's own text).

    Raises:
        InvalidRequestError: the user's own text leaves no room (param ``prompt_param``), or their
            explicit ``max_tokens`` is larger than the room left (param ``max_tokens``).
    """
    room = context_len - prompt_tokens
    if sampling.max_tokens <= room:
        return sampling.max_tokens
    if room < MIN_COMPLETION_TOKENS:
        raise InvalidRequestError(
            f"the prompt is {prompt_tokens} tokens, which leaves no room for an answer in the model's context "
            f"of {context_len} tokens; shorten it", param=prompt_param)
    if sampling.max_tokens_is_default:
        return room
    raise InvalidRequestError(
        f"max_tokens ({sampling.max_tokens}) + the prompt ({prompt_tokens} tokens) exceed the model's context of "
        f"{context_len} tokens; ask for at most {room}", param="max_tokens")


def pack_messages(messages: Sequence[ChatMessage], sampling: SamplingParams, context_len: int, tokens: Tokens,
                  prompt_param: str) -> Packed:
    """A prompt without retrieval: checked, nothing to pack."""
    n = tokens.count_prompt(messages)
    return Packed(tuple(messages), completion_budget(n, sampling, context_len, prompt_param), None)


def pack_rag(rag: RagPrompt, sampling: SamplingParams, context_len: int, tokens: Tokens,
             prompt_param: str) -> Packed:
    """Messages with as many of the retrieved passages as fit, best first.

    Raises:
        InvalidRequestError: only for the caller's own input (see :func:`completion_budget`).
    """
    def build(lines: Sequence[str]) -> tuple[ChatMessage, ...]:
        return prompt.messages_of_lines(rag.system_prompt, rag.question, lines, rag.history)

    bare = tokens.count_prompt(build([]))
    max_tokens = completion_budget(bare, sampling, context_len, prompt_param)
    lines = [prompt.source_line(n, h, rag.passage_chars) for n, h in enumerate(rag.hits, start=1)]
    # The frame around source lines replaces the no-sources sentence; count the difference once
    # (one empty line stands for the lines, whose own cost _fill counts).
    frame = (tokens.count(prompt.user_turn_of_lines(rag.question, [""]))
             - tokens.count(prompt.user_turn_of_lines(rag.question, [])))
    kept, trimmed = _fill(lines, context_len - max_tokens - bare - max(frame, 0), tokens)
    messages = build(kept)
    n_prompt = tokens.count_prompt(messages)
    while kept and n_prompt + max_tokens > context_len:  # joins between lines cost a little more
        over = n_prompt + max_tokens - context_len
        last = kept.pop()
        cut = _trim(last, tokens.count(last) - over - 1, tokens)
        if cut is not None:
            kept.append(cut)
            trimmed.add(len(kept))
        else:
            trimmed.discard(len(kept) + 1)
        messages = build(kept)
        n_prompt = tokens.count_prompt(messages)
    n_kept = len(kept)
    context = PackedContext(
        sources=tuple(range(1, n_kept + 1)), trimmed=tuple(sorted(trimmed)),
        dropped=tuple(range(n_kept + 1, len(lines) + 1)), prompt_tokens=n_prompt, max_tokens=max_tokens)
    return Packed(messages, max_tokens, context)


def _fill(lines: Sequence[str], budget: int, tokens: Tokens) -> tuple[list[str], set[int]]:
    """Lines that fit ``budget`` tokens in order; the first that does not is trimmed or ends the list."""
    kept: list[str] = []
    trimmed: set[int] = set()
    for line in lines:
        cost = tokens.count(line) + 1  # the newline joining it to the next
        if cost <= budget:
            kept.append(line)
            budget -= cost
            continue
        cut = _trim(line, budget - 1, tokens)
        if cut is not None:
            kept.append(cut)
            trimmed.add(len(kept))
        break
    return kept, trimmed


def _trim(line: str, n_tokens: int, tokens: Tokens) -> str | None:
    """``line`` cut to about ``n_tokens`` tokens with a trim mark, or None when too little is left."""
    n_tokens -= tokens.count(TRIM_MARK)
    if n_tokens < MIN_TRIMMED_TOKENS:
        return None
    return tokens.truncate(line, n_tokens).rstrip() + TRIM_MARK
