"""Retrieval that follows a conversation: the search query of a follow-up.

"And on the HX-430?" means nothing to a retriever on its own. For a question asked after
earlier turns, the text searched is built from the conversation, by ``conversation.condense``
(or the request's ``condense``):

* ``rewrite``: the generator writes the follow-up as a standalone question (a condense prompt
  with two short examples; greedy, ``rewrite_max_tokens``). A rewrite that is empty, runs on,
  is not drawn from the conversation (mostly words said in it), or does not arrive within
  ``rewrite_timeout_s`` falls back to ``join``;
* ``join``: the last ``join_turns`` user turns joined with the question — deterministic and
  free, and it carries the entities a follow-up leaves out;
* ``last``: the question alone.

Without history every mode searches the question as is. The response's ``search_query`` says
what was searched and how it was made.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from deployments.errors import RagServeError
from deployments.ingress.auth import OPEN
from deployments.preprocess import text as analysis
from deployments.protocol.api import Condense, SearchQuery
from deployments.protocol.stages import GenerationRequest, SamplingParams
from deployments.protocol.types import ChatMessage

if TYPE_CHECKING:
    from deployments.ingress.auth import Principal
    from deployments.ingress.pipeline import Pipeline

CONDENSE_SYSTEM = (
    "Rewrite the user's last question so that it can be understood without the conversation: keep its "
    "meaning and add the names, codes and numbers it refers to. Answer with the rewritten question only."
)
#: Two worked examples: a small model follows a pattern far better than an instruction alone.
EXAMPLES: tuple[tuple[str, str, str, str], ...] = (
    ("What is the warranty of the AquaMax 200 pump?", "Two years.", "And for the AquaMax 300?",
     "What is the warranty of the AquaMax 300 pump?"),
    ("Who wrote the 2021 safety policy?", "The facilities team.", "When was it last revised?",
     "When was the 2021 safety policy last revised?"),
)


def joined(question: str, history: Sequence[ChatMessage], turns: int) -> str:
    """The last ``turns`` user turns (oldest first) and the question, as one search text."""
    users = [m.content.strip() for m in history if m.role == "user" and m.content.strip()]
    return " ".join([*users[-turns:], question.strip()]) if turns > 0 else question.strip()


def condense_messages(question: str, history: Sequence[ChatMessage], turns: int) -> tuple[ChatMessage, ...]:
    """The rewrite prompt: instructions, the examples, then the conversation's recent turns."""
    def dialogue(pairs: Sequence[ChatMessage], last: str) -> str:
        lines = [f"{'User' if m.role == 'user' else 'Assistant'}: {m.content.strip()}" for m in pairs]
        return "Conversation:\n" + "\n".join(lines) + f"\nLast question: {last}\nStandalone question:"

    shots: list[ChatMessage] = []
    for q, a, follow_up, rewritten in EXAMPLES:
        convo = (ChatMessage(role="user", content=q), ChatMessage(role="assistant", content=a))
        shots += [ChatMessage(role="user", content=dialogue(convo, follow_up)),
                  ChatMessage(role="assistant", content=rewritten)]
    recent = [m for m in history if m.role in ("user", "assistant")][-2 * turns:]
    return (ChatMessage(role="system", content=CONDENSE_SYSTEM), *shots,
            ChatMessage(role="user", content=dialogue(recent, question)))


#: Share of a rewrite's content words that must come from the conversation: a small model
#: sometimes answers with one of the prompt's examples instead ("the 2021 safety policy").
MIN_GROUNDED_SHARE = 0.6


def accept_rewrite(text: str, max_chars: int, conversation_tokens: set[str] | None = None,
                   tokenize: Callable[[str], list[str]] | None = None, question: str = "") -> str | None:
    """The rewrite's first line when usable, else None (the caller falls back to ``join``).

    Usable: not empty, at most ``max_chars``, not the ``question`` repeated unchanged (a
    follow-up needs what it refers to, which ``join`` still adds), and (given ``tokenize``)
    drawn from the conversation: at least :data:`MIN_GROUNDED_SHARE` of its content words
    occur in it.
    """
    line = text.strip().split("\n", 1)[0].strip()
    if line.lower().startswith("standalone question:"):
        line = line.split(":", 1)[1]
    line = line.strip().strip('"').strip()
    if not line or len(line) > max_chars or line.casefold() == question.strip().casefold():
        return None
    if tokenize is not None and conversation_tokens is not None:
        words = set(tokenize(line))
        if words and len(words & conversation_tokens) / len(words) < MIN_GROUNDED_SHARE:
            return None
    return line


async def search_query(pipeline: "Pipeline", question: str, history: tuple[ChatMessage, ...],
                       mode: Condense | None, who: "Principal" = OPEN) -> SearchQuery:
    """What to retrieve for ``question`` asked after ``history``."""
    c = pipeline.cfg.conversation
    mode = mode or c.condense
    if mode == "last" or not any(m.role == "user" for m in history):
        return SearchQuery(text=question, mode="last")
    if mode == "rewrite":
        rewritten = await _rewrite(pipeline, question, history, who)
        if rewritten is not None:
            return SearchQuery(text=rewritten, mode="rewrite")
    return SearchQuery(text=joined(question, history, c.join_turns), mode="join")


async def _rewrite(pipeline: "Pipeline", question: str, history: tuple[ChatMessage, ...],
                   who: "Principal") -> str | None:
    c = pipeline.cfg.conversation
    req = GenerationRequest(
        messages=condense_messages(question, history, c.join_turns),
        sampling=SamplingParams(max_tokens=c.rewrite_max_tokens, temperature=0.0, top_p=1.0, stop=("\n",)),
        request_id=f"condense-{uuid.uuid4().hex[:12]}", prompt_param="messages", stream=False)
    try:
        async with asyncio.timeout(c.rewrite_timeout_s):
            _, chunks = await pipeline.start(req, who)  # the rewrite counts against the caller's limits
            out = await pipeline.collect(chunks)
    except (TimeoutError, RagServeError):
        # An overloaded or slow generator must not fail the question: the join fallback serves it.
        return None
    pcfg = pipeline.cfg.preprocess

    def tokenize(t: str) -> list[str]:
        return analysis.tokenize(analysis.normalize(t, pcfg.unicode_form), pcfg)

    said = " ".join([question, *(m.content for m in history if m.role in ("user", "assistant"))])
    return accept_rewrite(out.text(), c.rewrite_max_chars, set(tokenize(said)), tokenize, question)
