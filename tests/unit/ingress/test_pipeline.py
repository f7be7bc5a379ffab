"""The pipeline's generation deadlines, with a fake generator handle (error paths only), and the
reranked order of candidates.

A generator with no live replica (or a queue too long) must give a fast 503 before any response
byte is sent, not hold the client until the generation deadline.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from deployments.config import parse_app_config
from deployments.errors import OverloadedError
from deployments.ingress.pipeline import BURST_RETRY_S, Pipeline
from deployments.protocol.stages import (
    GenerationChunk, GenerationChunks, GenerationRequest, Hit, PackedContext, PreparedQuery, SamplingParams,
)
from deployments.protocol.types import ChatMessage

REQ = GenerationRequest(messages=(ChatMessage(role="user", content="hi"),),
                        sampling=SamplingParams(max_tokens=4, temperature=0.0, top_p=1.0), request_id="r1")


class FakeStream:
    """Yields ``chunks``, one message each; with ``hang`` it never yields its first message (no
    replica took it)."""

    def __init__(self, chunks: list[GenerationChunk], hang: bool = False) -> None:
        self.chunks, self.hang, self.cancelled = list(chunks), hang, False

    async def __anext__(self) -> GenerationChunks:
        if self.hang:
            await asyncio.sleep(3600)
        if not self.chunks:
            raise StopAsyncIteration
        return GenerationChunks(chunks=(self.chunks.pop(0),))

    def cancel(self) -> None:
        self.cancelled = True


class FakeHandle:
    def __init__(self, stream: FakeStream) -> None:
        self.stream = stream
        self.generate = self

    def options(self, **_: object) -> "FakeHandle":
        return self

    def remote(self, _req: GenerationRequest) -> FakeStream:
        return self.stream


def ingress(stream: FakeStream) -> Pipeline:
    """A pipeline whose generator is the fake handle (the handle is injected, nothing patched)."""
    return Pipeline({"generator": FakeHandle(stream)}, parse_app_config({"generator": {"accept_timeout_s": 0.2}}))


async def drain(it) -> list[str]:
    return [c.text async for c in it]


def test_no_first_chunk_is_a_fast_503_with_retry_after() -> None:
    stream = FakeStream([], hang=True)
    start = time.monotonic()
    with pytest.raises(OverloadedError) as err:
        asyncio.run(drain(ingress(stream)._generate(REQ)))
    assert time.monotonic() - start < 2
    assert err.value.status == 503 and err.value.retry_after_s == pytest.approx(0.2)
    assert stream.cancelled


def test_started_raises_before_a_streaming_response_begins() -> None:
    async def main() -> None:
        await ingress(FakeStream([], hang=True)).start(REQ)

    with pytest.raises(OverloadedError):
        asyncio.run(main())


def test_started_returns_the_admission_context_then_the_text() -> None:
    ctx = PackedContext(sources=(1, 2), dropped=(3,), prompt_tokens=900, max_tokens=64)
    chunks = [GenerationChunk(text="", context=ctx), GenerationChunk(text="a"), GenerationChunk(text="b"),
              GenerationChunk(text="", finish_reason="stop")]

    async def main() -> tuple[PackedContext | None, list[str]]:
        context, rest = await ingress(FakeStream(chunks)).start(REQ)
        return context, await drain(rest)

    assert asyncio.run(main()) == (ctx, ["a", "b", ""])


def test_a_message_of_several_chunks_is_read_chunk_by_chunk() -> None:
    """A collected generation (or an engine output of several choices) is one message."""
    whole = GenerationChunks.collected([GenerationChunk(text="ab"), GenerationChunk(text="c", finish_reason="stop"),
                                        GenerationChunk(done=True, prompt_tokens=3, completion_tokens=2)])
    messages = [GenerationChunks(chunks=(GenerationChunk(),)), whole]

    class Messages(FakeStream):
        async def __anext__(self) -> GenerationChunks:
            if not messages:
                raise StopAsyncIteration
            return messages.pop(0)

    async def main():
        _, rest = await ingress(Messages([])).start(REQ)
        return await Pipeline.collect(rest)

    out = asyncio.run(main())
    assert (out.text(), out.finish[0], out.prompt_tokens, out.completion_tokens) == ("abc", "stop", 3, 2)


def test_empty_stream_ends_cleanly() -> None:
    async def main() -> tuple[PackedContext | None, list[str]]:
        context, rest = await ingress(FakeStream([])).start(REQ)
        return context, await drain(rest)

    assert asyncio.run(main()) == (None, [])


class FailingStream(FakeStream):
    """A stream that fails on its first chunk; cancelling it raises (as a stream already over may)."""

    async def __anext__(self) -> GenerationChunks:
        from ray.serve.exceptions import BackPressureError

        raise BackPressureError(num_queued_requests=4, max_queued_requests=4)

    def cancel(self) -> None:
        raise AssertionError("a stream that already failed must not be cancelled")


def test_a_finished_or_failed_stream_is_not_cancelled() -> None:
    stream = FakeStream([GenerationChunk(text="a"), GenerationChunk(text="", finish_reason="stop")])
    assert asyncio.run(drain(ingress(stream)._generate(REQ))) == ["a", ""]
    assert not stream.cancelled
    # Serve's queue for the generator is full: our 503 with Retry-After, nothing else on top.
    with pytest.raises(OverloadedError) as err:
        asyncio.run(drain(ingress(FailingStream([]))._generate(REQ)))
    assert err.value.status == 503 and err.value.retry_after_s >= 1


class BurstHandle(FakeHandle):
    """Serve refuses the first ``refusals`` calls for its queue bound, then a replica takes the call."""

    def __init__(self, refusals: int, stream: FakeStream) -> None:
        super().__init__(stream)
        self.refusals, self.calls = refusals, 0

    def remote(self, _req: GenerationRequest) -> FakeStream:
        self.calls += 1
        return FailingStream([]) if self.calls <= self.refusals else self.stream


def burst(handle: BurstHandle) -> Pipeline:
    return Pipeline({"generator": handle}, parse_app_config({}))


def test_a_burst_refused_by_serves_queue_bound_is_sent_again() -> None:
    """Serve's router refuses a burst larger than max_queued_requests while it assigns it one
    request at a time, though the replica has free slots: a short retry gets the generation in."""
    handle = BurstHandle(len(BURST_RETRY_S), FakeStream([GenerationChunk(text="a"), GenerationChunk(text="b")]))
    assert asyncio.run(drain(burst(handle)._generate(REQ))) == ["a", "b"]
    assert handle.calls == len(BURST_RETRY_S) + 1


def test_a_queue_that_stays_full_is_a_503_after_the_retries() -> None:
    handle = BurstHandle(10, FakeStream([GenerationChunk(text="a")]))
    with pytest.raises(OverloadedError) as err:
        asyncio.run(drain(burst(handle)._generate(REQ)))
    assert err.value.status == 503 and err.value.retry_after_s >= 1
    assert handle.calls == len(BURST_RETRY_S) + 1


def test_a_consumer_that_goes_away_cancels_the_generator_stream() -> None:
    """A client disconnect closes the ingress's generator between chunks, or cancels the task
    awaiting the next one: either way the generator replica's stream is cancelled (so the engine
    aborts the sequence), which Serve does not do by itself."""
    chunks = [GenerationChunk(text=t) for t in "abcdef"]

    async def closed_between_chunks() -> FakeStream:
        stream = FakeStream(list(chunks))
        gen = ingress(stream)._generate(REQ)
        assert await gen.__anext__() == chunks[0]
        await gen.aclose()
        return stream

    async def cancelled_while_waiting() -> FakeStream:
        stream = FakeStream(chunks[:1])
        gen = ingress(stream)._generate(REQ)
        await gen.__anext__()
        stream.hang = True  # the next chunk never comes before the client leaves
        task = asyncio.create_task(gen.__anext__())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return stream

    assert asyncio.run(closed_between_chunks()).cancelled
    assert asyncio.run(cancelled_while_waiting()).cancelled


def test_several_choices_sample_unless_the_caller_asked_for_greedy() -> None:
    """The server's greedy default would make n answers one answer n times (and vLLM refuses n > 1
    greedy): without the caller's temperature it samples; a caller's explicit 0 is their 400."""
    from deployments.errors import InvalidRequestError
    from deployments.ingress.pipeline import N_CHOICES_TEMPERATURE

    p = Pipeline({}, parse_app_config({"generator": {"sampling": {"temperature": 0.0}}}))
    assert p.sampling_of(8, None, None, (), None, n=2).temperature == N_CHOICES_TEMPERATURE
    assert p.sampling_of(8, 0.3, None, (), None, n=2).temperature == 0.3
    assert p.sampling_of(8, None, None, (), None).temperature == 0.0
    with pytest.raises(InvalidRequestError) as e:
        p.sampling_of(8, 0.0, None, (), None, n=2)
    assert e.value.param == "n"


def _hit(doc: str, text: str) -> Hit:
    return Hit(id=f"{doc}#0", doc_id=doc, source=doc, title="", chunk_index=0, text=text, score=0.0,
               created_at=0, updated_at=0)


def test_the_cross_encoders_order_keeps_the_exact_term_preference_of_hybrid_requests() -> None:
    """A cross-encoder that puts 3.4.0 first for a question naming 3.4.1 is overruled by the exact
    term; dense requests, and a config without ``reranker.precision``, keep its order."""
    ce_order = (_hit("r340", "Release 3.4.0 raises the connection limit."),
                _hit("r341", "Release 3.4.1 repairs the clock."))
    q = PreparedQuery(text="release 3.4.1 limit", tokens=("releas", "limit"), language="en", key_terms=("3.4.1",))
    on = Pipeline({}, parse_app_config({}))
    assert [h.doc_id for h in on.reranked(q, "hybrid", ce_order)] == ["r341", "r340"]
    assert [h.doc_id for h in on.reranked(q, None, ce_order)] == ["r341", "r340"]  # search.mode is hybrid
    assert [h.doc_id for h in on.reranked(q, "dense", ce_order)] == ["r340", "r341"]
    off = Pipeline({}, parse_app_config({"reranker": {"precision": False}}))
    assert [h.doc_id for h in off.reranked(q, "hybrid", ce_order)] == ["r340", "r341"]
