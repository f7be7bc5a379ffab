"""``POST /v1/completions``: OpenAI's text completions, the model alone on raw text prompts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import APIRouter, Request

from deployments.ingress import http
from deployments.ingress import openai_compat as oa
from deployments.ingress.auth import Principal
from deployments.ingress.openapi import operation
from deployments.ingress.pipeline import Collected, Pipeline
from deployments.protocol.api import ErrorResponse
from deployments.protocol.openai import Completion, CompletionChoice, CompletionRequest, UsageInfo
from deployments.protocol.stages import GenerationChunk, GenerationRequest, SamplingParams


def router(p: Pipeline) -> APIRouter:
    r = APIRouter(tags=["openai"])
    max_body = p.cfg.ingress.max_body_bytes

    @r.post("/v1/completions", **operation(
        body=CompletionRequest, response=Completion, errors=(400, 404, 413),
        examples={"text": {"prompt": "The irrigation pump keeps the pressure", "max_tokens": 16}},
        stream="Completion objects with object `text_completion`, then `data: [DONE]`",
        events=(Completion, ErrorResponse)))
    async def completions(request: Request, who: Principal = p.access.requires("query")) -> Any:
        """Raw text completion (no chat template, no retrieval); several prompts give several choices."""
        body = await http.read_json(request, CompletionRequest, max_body)
        model = oa.served_model(body.model, p.cfg.generator.model)
        prompts = oa.completion_prompts(body)
        sampling = p.sampling_of(body.max_tokens, body.temperature, body.top_p, oa.stop_strings(body.stop),
                                 body.seed, logprobs=body.logprobs, **oa.common_sampling(body))
        rid = f"cmpl-{http.request_id(request)}"
        gens = [GenerationRequest(text=text, sampling=sampling, request_id=f"{rid}-{i}", prompt_param="prompt",
                                  stream=bool(body.stream)) for i, text in enumerate(prompts)]
        streams = [chunks for _, chunks in await asyncio.gather(*(p.start(g, who) for g in gens))]
        head = {"id": rid, "created": int(time.time()), "model": model}
        echo = bool(body.echo)
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return http.stream(_events(head, prompts, streams, sampling, echo, usage))
        outs = await asyncio.gather(*(p.collect(s) for s in streams))
        return _completion(head, prompts, outs, sampling, echo)

    return r


def _choice_text(prompt: str, text: str, echo: bool) -> str:
    return prompt + text if echo else text


def _completion(head: dict, prompts: Sequence[str], outs: Sequence[Collected], s: SamplingParams,
                echo: bool) -> Completion:
    choices = []
    for k, (text_in, out) in enumerate(zip(prompts, outs, strict=True)):
        for i in range(s.n):
            lp = oa.completion_logprobs(out.logprobs.get(i, []), len(text_in) if echo else 0) \
                if s.logprobs is not None else None
            choices.append(CompletionChoice(index=k * s.n + i, text=_choice_text(text_in, out.text(i), echo),
                                            logprobs=lp, finish_reason=out.finish.get(i)))
    n_prompt = sum(o.prompt_tokens for o in outs)
    n_out = sum(o.completion_tokens for o in outs)
    return Completion(**head, choices=choices,
                      usage=UsageInfo(prompt_tokens=n_prompt, completion_tokens=n_out, total_tokens=n_prompt + n_out))


async def _events(head: dict, prompts: Sequence[str], streams: Sequence[AsyncIterator[GenerationChunk]],
                  s: SamplingParams, echo: bool, include_usage: bool) -> AsyncIterator[str]:
    def event(choices: list[CompletionChoice], usage: UsageInfo | None = None) -> str:
        return http.sse(Completion(**head, choices=choices, usage=usage))

    if echo:
        yield event([CompletionChoice(index=k * s.n + i, text=text, finish_reason=None)
                     for k, text in enumerate(prompts) for i in range(s.n)])
    totals = [0, 0]
    async for k, chunk in _merge(streams):
        if chunk.text or chunk.finish_reason is not None:
            lp = oa.completion_logprobs(chunk.logprobs) if s.logprobs is not None and chunk.logprobs else None
            yield event([CompletionChoice(index=k * s.n + chunk.index, text=chunk.text, logprobs=lp,
                                          finish_reason=chunk.finish_reason)])
        if chunk.done:
            totals[0] += chunk.prompt_tokens
            totals[1] += chunk.completion_tokens
    if include_usage:
        yield event([], UsageInfo(prompt_tokens=totals[0], completion_tokens=totals[1], total_tokens=sum(totals)))
    yield http.sse("[DONE]")


async def _merge(streams: Sequence[AsyncIterator[GenerationChunk]]) -> AsyncIterator[tuple[int, GenerationChunk]]:
    """Chunks of several generations as they come, each with its prompt's index."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(k: int, stream: AsyncIterator[GenerationChunk]) -> None:
        try:
            async for chunk in stream:
                await queue.put((k, chunk, None))
        except Exception as exc:  # delivered in order, then raised in the consumer
            await queue.put((k, None, exc))
        finally:
            await queue.put((k, None, None))

    tasks = [asyncio.create_task(pump(k, st)) for k, st in enumerate(streams)]
    try:
        open_streams = len(tasks)
        while open_streams:
            k, chunk, exc = await queue.get()
            if exc is not None:
                raise exc
            if chunk is None:
                open_streams -= 1
                continue
            yield k, chunk
    finally:
        for t in tasks:
            t.cancel()
