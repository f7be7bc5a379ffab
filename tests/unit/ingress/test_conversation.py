"""The search query of a follow-up: join, rewrite, and the fallbacks (fake generator, real pipeline)."""

from __future__ import annotations

import asyncio

import pytest

from deployments.config import parse_app_config
from deployments.errors import OverloadedError
from deployments.ingress import conversation
from deployments.ingress.pipeline import Pipeline
from deployments.protocol.stages import GenerationChunk, GenerationChunks, GenerationRequest
from deployments.protocol.types import ChatMessage

HISTORY = (ChatMessage(role="user", content="What does E-4471 mean on the HX-420?"),
           ChatMessage(role="assistant", content="It is a pump fault."))


class Stream:
    def __init__(self, chunks: list[GenerationChunk], fail: Exception | None = None) -> None:
        self.chunks, self.fail = list(chunks), fail

    async def __anext__(self) -> GenerationChunks:
        if self.fail is not None:
            raise self.fail
        if not self.chunks:
            raise StopAsyncIteration
        return GenerationChunks(chunks=(self.chunks.pop(0),))

    def cancel(self) -> None:
        pass


class Generator:
    """Records the rewrite request and answers with ``text``."""

    def __init__(self, text: str = "", fail: Exception | None = None) -> None:
        self.text, self.fail, self.requests = text, fail, []
        self.generate = self

    def options(self, **_: object) -> "Generator":
        return self

    def remote(self, req: GenerationRequest) -> Stream:
        self.requests.append(req)
        chunks = [GenerationChunk(), GenerationChunk(text=self.text, finish_reason="stop"), GenerationChunk(done=True)]
        return Stream(chunks, self.fail)


def pipeline(gen: Generator, **conv: object) -> Pipeline:
    return Pipeline({"generator": gen}, parse_app_config({"conversation": conv}))


def ask(p: Pipeline, question: str, history: tuple = HISTORY, mode: str | None = None):
    return asyncio.run(conversation.search_query(p, question, history, mode))


def test_join_carries_the_earlier_user_turns() -> None:
    assert conversation.joined("And on the HX-430?", HISTORY, 2) == \
        "What does E-4471 mean on the HX-420? And on the HX-430?"
    many = tuple(ChatMessage(role="user", content=f"q{i}") for i in range(5))
    assert conversation.joined("last", many, 2) == "q3 q4 last"
    assert conversation.joined("last", many, 0) == "last"


def test_without_history_the_question_is_searched_as_is() -> None:
    gen = Generator("ignored")
    q = ask(pipeline(gen), "What is E-4471?", history=())
    assert (q.text, q.mode) == ("What is E-4471?", "last") and gen.requests == []


def test_rewrite_is_used_when_usable() -> None:
    gen = Generator("What does E-4471 mean on the HX-430?")
    q = ask(pipeline(gen), "And on the HX-430?", mode="rewrite")
    assert (q.text, q.mode) == ("What does E-4471 mean on the HX-430?", "rewrite")
    prompt = gen.requests[0].messages[-1].content
    assert "HX-420" in prompt and prompt.endswith("Last question: And on the HX-430?\nStandalone question:")
    assert gen.requests[0].sampling.temperature == 0.0
    assert gen.requests[0].stream is False  # collected in the generator replica: one message back


@pytest.mark.parametrize("text", ["", "   ", "x" * 500, "What is the 2021 safety policy?"])
def test_an_unusable_rewrite_falls_back_to_join(text: str) -> None:
    q = ask(pipeline(Generator(text)), "And on the HX-430?", mode="rewrite")
    assert q.mode == "join" and q.text.endswith("And on the HX-430?") and "HX-420" in q.text


def test_an_overloaded_generator_falls_back_to_join() -> None:
    q = ask(pipeline(Generator(fail=OverloadedError("full"))), "And on the HX-430?", mode="rewrite")
    assert q.mode == "join"


def test_the_request_and_the_config_choose_the_mode() -> None:
    rewriter = Generator("What does E-4471 mean on the HX-430?")
    assert ask(pipeline(rewriter, condense="rewrite"), "And on the HX-430?").mode == "rewrite"
    gen = Generator("What does E-4471 mean on the HX-430?")
    assert ask(pipeline(gen), "And on the HX-430?").mode == "join"  # the default (measured: README)
    assert ask(pipeline(gen, condense="rewrite"), "And on the HX-430?", mode="join").mode == "join"
    assert ask(pipeline(gen), "And on the HX-430?", mode="last").text == "And on the HX-430?"
    assert gen.requests == []  # neither asked the generator


def test_accept_rewrite_takes_the_first_line_without_a_label() -> None:
    assert conversation.accept_rewrite('Standalone question: "Why?"\nmore', 100) == "Why?"
    assert conversation.accept_rewrite("\n", 100) is None


def test_a_rewrite_that_repeats_the_follow_up_is_refused() -> None:
    """The model echoing "How is it cleared?" back would search the bare follow-up."""
    assert conversation.accept_rewrite("How is it cleared?", 100, question="how is it cleared? ") is None
    assert conversation.accept_rewrite("How is E-4471 cleared?", 100, question="How is it cleared?")
