"""The RAG prompt: retrieved passages as numbered sources, and citations read back.

Kept free of vLLM/torch so it is unit-testable and shared by every route that generates
from retrieved passages (``/v1/query`` and ``/v1/chat/completions``).

Retrieved passages are data, not instructions, and a document's author is not to be trusted
(prompt injection): each passage is exactly one line that starts with its own ``[n]``, so the
prompt's structure is the line structure, and a document cannot leave its line. Inside title
and text, whitespace (newlines included) is collapsed, and whatever could pass for structure is
escaped (:func:`escape`): a citation-shaped ``[2]`` (another source, or a citation the answer
would then appear to make), and chat-template control tokens or tags such as
``<|im_start|>``, which the engine's tokenizer would otherwise turn into real role markers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence

from deployments.protocol.stages import Hit

from deployments.protocol.types import ChatMessage

_CITE = re.compile(r"\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]")

#: What a document could use to forge a source or a citation: ``[2]``, ``[1, 3]``, and the
#: full-width ``［2］`` / ``【2】`` a model may read the same way.
_MARKER = re.compile(r"[\[［【](\s*\d{1,3}(?:\s*[,，]\s*\d{1,3})*\s*)[\]］】]")
#: Control tokens and tags of chat templates: ``<|im_start|>``, ``<|eot_id|>``, ``<｜User｜>``,
#: ``</s>``, ``<start_of_turn>``, and any ``<tag>``/``</tag>`` (a delimiter a prompt could use);
#: plus bracketed control words such as ``[INST]`` or ``[/INST]``.
_TAG = re.compile(r"</?[|｜]?[A-Za-z_][^<>\s]{0,48}>")
_CONTROL = re.compile(r"\[(/?[A-Z][A-Z_]{1,31})\]")


def escape(text: str) -> str:
    """``text`` with every source marker and control token made inert, its length unchanged.

    ``[2]`` becomes ``(2)`` and ``[INST]`` becomes ``(INST)``; the angle brackets of a tag become
    ``‹ ›`` (``<|im_end|>`` → ``‹|im_end|›``), which reads the same to a model but is ordinary
    text to every tokenizer. One character for one keeps ``passage_chars`` cuts where they were.
    Whitespace is not touched here (see :func:`clean`).
    """
    text = _MARKER.sub(r"(\1)", text)
    text = _CONTROL.sub(r"(\1)", text)
    return _TAG.sub(lambda m: "‹" + m.group(0)[1:-1] + "›", text)


def clean(text: str) -> str:
    """A document's text or title as it goes into the prompt: one line (all whitespace, newlines
    and Unicode line separators included, collapsed to single spaces), then :func:`escape`."""
    return escape(" ".join(text.split()))


def source_line(n: int, hit: Hit, passage_chars: int) -> str:
    """Source ``[n]`` as one line, ``[n] title: text``, its text cut to ``passage_chars``.

    Title and text are :func:`clean`: neither can start another line or hold a marker.
    """
    text = clean(hit.text)
    if len(text) > passage_chars:
        text = text[:passage_chars].rstrip() + " ..."
    title = clean(hit.title)
    return f"[{n}] {title}: {text}" if title else f"[{n}] {text}"


def format_sources(hits: Sequence[Hit], passage_chars: int) -> str:
    """One line per passage, ``[n] title: text``, each text cut to ``passage_chars``.

    Compact on purpose: small models (SmolLM2-135M) answered noticeably more often from
    one-line sources than from multi-line blocks with headers, in trials on the sample corpus.
    """
    return "\n".join(source_line(n, h, passage_chars) for n, h in enumerate(hits, start=1))


def user_turn(question: str, hits: Sequence[Hit], passage_chars: int) -> str:
    """The user message that carries the sources and the question."""
    return user_turn_of_lines(question, format_sources(hits, passage_chars).splitlines())


def user_turn_of_lines(question: str, lines: Sequence[str]) -> str:
    """:func:`user_turn` from already formatted source lines (the packer trims them)."""
    if not lines:
        return f"There are no sources for this question.\n\nQuestion: {question}"
    return "Sources:\n" + "\n".join(lines) + f"\n\nQuestion: {question}"


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
    return messages_of_lines(system_prompt, question, format_sources(hits, passage_chars).splitlines(), history)


def messages_of_lines(system_prompt: str, question: str, lines: Sequence[str],
                      history: Sequence[ChatMessage] = ()) -> tuple[ChatMessage, ...]:
    """:func:`rag_messages` from already formatted source lines."""
    client_system = [m.content for m in history if m.role == "system"]
    system = "\n\n".join([system_prompt, *client_system])
    turns = [m for m in history if m.role != "system"]
    return (
        ChatMessage(role="system", content=system),
        *turns,
        ChatMessage(role="user", content=user_turn_of_lines(question, lines)),
    )


def cited_sources(answer: str, n_sources: int, shown: Collection[int] | None = None) -> list[int]:
    """Source numbers cited in ``answer`` as ``[n]`` or ``[n, m]``, in first-cited order.

    Numbers outside ``1..n_sources`` are ignored: a model may invent ``[7]`` with 4 sources; so
    are those not in ``shown`` (the sources packed into the prompt, when given): a model that
    writes ``[12]`` when only sources 1-8 fit into its context cites nothing it read.
    """
    seen: list[int] = []
    for group in _CITE.findall(answer):
        for part in group.split(","):
            n = int(part)
            if 1 <= n <= n_sources and n not in seen and (shown is None or n in shown):
                seen.append(n)
    return seen


_SENTENCE = re.compile(r"(?<=[.!?。！？])\s*|\n+")


def grounding(
    answer: str, hits: Sequence[Hit], tokenize: Callable[[str], list[str]], min_overlap: float = 0.6
) -> list[int]:
    """Sources that the answer's sentences are drawn from, by lexical overlap.

    Small models often answer correctly from a source without writing ``[n]``; this finds,
    for each answer sentence with at least two content tokens, the source containing the
    largest share of them, and keeps it when that share is at least ``min_overlap``. It is
    reported beside the model's own citations (never mixed into them) so clients can tell
    what the model claimed from what the text shows.

    Args:
        answer: generated text.
        hits: the sources ``[1]..[n]`` the answer was generated from.
        tokenize: the lexical analyser (the same one as BM25: stemmed, stopwords removed).
        min_overlap: share of a sentence's tokens that must appear in the source.
    """
    source_tokens = [set(tokenize(h.text)) for h in hits]
    found: list[int] = []
    for sentence in _SENTENCE.split(_CITE.sub(" ", answer)):
        toks = set(tokenize(sentence))
        if len(toks) < 2:
            continue
        shares = [len(toks & st) / len(toks) for st in source_tokens]
        best = max(range(len(shares)), key=shares.__getitem__, default=None)
        if best is not None and shares[best] >= min_overlap and best + 1 not in found:
            found.append(best + 1)
    return found
