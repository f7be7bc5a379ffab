"""``POST /v1/chat/completions``: OpenAI chat, answered from retrieved sources.

The conversation is retrieved for (its last user turn, made a standalone search query by
``deployments.ingress.conversation``) unless ``retrieval`` is false; the sources come back in
the response and in the first streamed chunk.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request

from deployments.errors import InvalidRequestError
from deployments.generator import prompt
from deployments.ingress import http
from deployments.ingress import openai_compat as oa
from deployments.ingress.auth import Principal
from deployments.ingress.openapi import operation
from deployments.ingress.pipeline import Collected, Pipeline, Retrieval
from deployments.protocol.api import ErrorResponse, RetrievalFields, Source
from deployments.protocol.openai import (
    AssistantMessage, ChatChoice, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ChunkChoice, ChunkDelta,
    UsageInfo,
)
from deployments.protocol.stages import GenerationChunk, GenerationRequest, PackedContext

log = logging.getLogger("ray.serve")
EXAMPLES = {
    "question": {"model": "bundled:SmolLM2-135M-Instruct",
                 "messages": [{"role": "user", "content": "What does Nimbus Vault error code E-4471 mean?"}]},
    "streamed with usage": {"messages": [{"role": "user", "content": "What is the Cuilan tea garden's altitude?"}],
                            "stream": True, "stream_options": {"include_usage": True}, "max_completion_tokens": 64},
    "JSON mode": {"messages": [{"role": "user", "content": "Give the Verdant Loop pump's maximum pressure as JSON."}],
                  "response_format": {"type": "json_object"}},
}


def router(p: Pipeline) -> APIRouter:
    r = APIRouter(tags=["openai"])
    max_body = p.cfg.ingress.max_body_bytes

    @r.post("/v1/chat/completions", **operation(
        body=ChatCompletionRequest, response=ChatCompletion, errors=(400, 404, 413), examples=EXAMPLES,
        stream="ChatCompletionChunk objects (the first with ragserve's `sources`, `context`, `search_query`), "
               "a usage chunk with `stream_options.include_usage`, then `data: [DONE]`",
        events=(ChatCompletionChunk, ErrorResponse)))
    async def chat_completions(request: Request, who: Principal = p.access.requires("query")) -> Any:
        """OpenAI chat completions; the conversation is retrieved for unless ``retrieval`` is false."""
        body = await http.read_json(request, ChatCompletionRequest, max_body)
        model = oa.served_model(body.model, p.cfg.generator.model)
        messages = oa.chat_messages(body.messages)
        limit, param = oa.chat_limits(body)
        sampling = p.sampling_of(limit, body.temperature, body.top_p, oa.stop_strings(body.stop), body.seed,
                                 param=param, **oa.common_sampling(body), **oa.chat_options(body))
        rid = f"chatcmpl-{http.request_id(request)}"
        if body.user:
            log.info("chat completion %s for user %r (key %s)", rid, body.user[:256], who.key_id)
        got: Retrieval | None = None
        if body.retrieval:
            if messages[-1].role != "user" or not messages[-1].content.strip():
                raise InvalidRequestError("the last message must be a non-empty user message", param="messages")
            question, history = messages[-1].content, tuple(messages[:-1])
            where = RetrievalFields(top_k=body.top_k, mode=body.mode, collection=body.collection,
                                    filter=body.filter, condense=body.condense)
            got = await p.retrieve(question, where, history, who, http.cache_allowed(request))
            gen = GenerationRequest(rag=p.rag_prompt(question, got.result.hits, history), sampling=sampling,
                                    request_id=rid, prompt_param="messages", stream=bool(body.stream))
        else:
            gen = GenerationRequest(messages=tuple(messages), sampling=sampling, request_id=rid,
                                    stream=bool(body.stream))
        context, chunks = await p.start(gen, who)
        head = _Head(rid, int(time.time()), model, got, context)
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return http.stream(_events(head, chunks, sampling.n, usage, sampling.logprobs is not None))
        return _completion(head, await p.collect(chunks), sampling.n, sampling.logprobs is not None)

    return r


class _Head:
    """What every chunk of one completion shares, and ragserve's additions."""

    def __init__(self, rid: str, created: int, model: str, got: Retrieval | None, context: PackedContext | None):
        self.rid, self.created, self.model, self.context = rid, created, model, context
        self.hits = got.result.hits if got else ()
        self.sources = Source.numbered(self.hits)
        self.search_query = got.search_query if got else None


def _completion(h: _Head, out: Collected, n: int, logprobs: bool) -> ChatCompletion:
    choices = [ChatChoice(index=i, message=AssistantMessage(content=out.text(i)), finish_reason=out.finish.get(i),
                          logprobs=oa.chat_logprobs(out.logprobs.get(i, [])) if logprobs else None)
               for i in range(n)]
    return ChatCompletion(
        id=h.rid, created=h.created, model=h.model, choices=choices, sources=h.sources, context=h.context,
        search_query=h.search_query,
        cited=prompt.cited_sources(out.text(0), len(h.sources), h.context and h.context.sources),
        usage=UsageInfo(prompt_tokens=out.prompt_tokens, completion_tokens=out.completion_tokens,
                        total_tokens=out.prompt_tokens + out.completion_tokens))


def _chunk(h: _Head, choices: list[ChunkChoice], **extra: Any) -> str:
    c = ChatCompletionChunk(id=h.rid, created=h.created, model=h.model, choices=choices, **extra)
    data = c.model_dump(mode="json")
    # As OpenAI streams them: a delta holds only what changed ({} on the finishing chunk), and
    # ragserve's additions appear on the first chunk only.
    for choice in data["choices"]:
        choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
    for key in ("sources", "context", "search_query"):
        if data[key] is None:
            del data[key]
    return http.sse(data)


async def _events(h: _Head, chunks: AsyncIterator[GenerationChunk], n: int, include_usage: bool,
                  logprobs: bool) -> AsyncIterator[str]:
    first = [ChunkChoice(index=i, delta=ChunkDelta(role="assistant", content="")) for i in range(n)]
    yield _chunk(h, first, sources=h.sources, context=h.context, search_query=h.search_query)
    async for chunk in chunks:
        if chunk.text or chunk.finish_reason is not None:
            lp = oa.chat_logprobs(chunk.logprobs) if logprobs and chunk.logprobs else None
            delta = ChunkDelta(content=chunk.text) if chunk.text else ChunkDelta()
            yield _chunk(h, [ChunkChoice(index=chunk.index, delta=delta, logprobs=lp,
                                         finish_reason=chunk.finish_reason)])
        if chunk.done and include_usage:
            yield _chunk(h, [], usage=UsageInfo(prompt_tokens=chunk.prompt_tokens,
                                                completion_tokens=chunk.completion_tokens,
                                                total_tokens=chunk.prompt_tokens + chunk.completion_tokens))
    yield http.sse("[DONE]")
