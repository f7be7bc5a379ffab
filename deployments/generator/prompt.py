"""The RAG prompt: retrieved passages as numbered sources, and citations read back.

Kept free of vLLM/torch so it is unit-testable and shared by every route that generates
from retrieved passages (``/v1/query`` and ``/v1/chat/completions``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from deployments.protocol import ChatMessage, Hit

_CITE = re.compile(r"\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]")


def format_sources(hits: Sequence[Hit], passage_chars: int) -> str:
    """Number the passages ``[1]..[n]`` with their title and source, each cut to ``passage_chars``."""
    blocks = []
    for n, h in enumerate(hits, start=1):
        text = h.text if len(h.text) <= passage_chars else h.text[:passage_chars].rstrip() + " ..."
        label = f"{h.title} ({h.source})" if h.title else h.source
        blocks.append(f"[{n}] {label}\n{text}")
    return "\n\n".join(blocks)


def user_turn(question: str, hits: Sequence[Hit], passage_chars: int) -> str:
    """The user message that carries the sources and the question."""
    if not hits:
        return f"There are no sources for this question.\n\nQuestion: {question}"
    return (
        f"Sources:\n\n{format_sources(hits, passage_chars)}\n\n"
        f"Question: {question}\n"
        "Answer briefly from the sources and cite the source number in brackets, like [1]."
    )


def rag_messages(
    system_prompt: str,
    question: str,
    hits: Sequence[Hit],
    passage_chars: int,
    history: Sequence[ChatMessage] = (),
) -> tuple[ChatMessage, ...]:
    """Messages for the engine's chat template.

    Args:
        system_prompt: ragserve's grounding instructions; a client's own system messages
            (in ``history``) are appended to it rather than replacing it.
        question: the user's question (the last user turn for chat).
        hits: retrieved passages, best first; they become sources ``[1]..[n]``.
        passage_chars: longest passage text put in the prompt.
        history: earlier chat turns (without the final user question).
    """
    client_system = [m.content for m in history if m.role == "system"]
    system = "\n\n".join([system_prompt, *client_system])
    turns = [m for m in history if m.role != "system"]
    return (
        ChatMessage(role="system", content=system),
        *turns,
        ChatMessage(role="user", content=user_turn(question, hits, passage_chars)),
    )


def cited_sources(answer: str, n_sources: int) -> list[int]:
    """Source numbers cited in ``answer`` as ``[n]`` or ``[n, m]``, in first-cited order.

    Numbers outside ``1..n_sources`` are ignored: a model may invent ``[7]`` with 4 sources.
    """
    seen: list[int] = []
    for group in _CITE.findall(answer):
        for part in group.split(","):
            n = int(part)
            if 1 <= n <= n_sources and n not in seen:
                seen.append(n)
    return seen
