"""ragserve's own question routes: ``/v1/retrieve``, ``/v1/query``, ``/v1/generate``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request

from deployments.errors import InvalidRequestError
from deployments.generator import prompt
from deployments.ingress import http
from deployments.ingress.auth import Principal
from deployments.ingress.openapi import operation
from deployments.ingress.pipeline import Pipeline, Retrieval
from deployments.protocol.api import (
    DeltaEvent, ErrorResponse, GenerateDoneEvent, GenerateRequest, GenerateResponse, QueryDoneEvent, QueryRequest, QueryResponse,
    QuerySourcesEvent, RetrieveRequest, RetrieveResponse, Source, Usage,
)
from deployments.protocol.stages import GenerationChunk, GenerationRequest, PackedContext
from deployments.protocol.types import ChatMessage

QUERY_EXAMPLES = {
    "question": {"question": "What is the maximum water pressure of the Verdant Loop irrigation pump?"},
    "streamed, filtered": {"question": "What does error code E-4471 mean?", "top_k": 3, "stream": True,
                           "filter": {"source_prefix": "docs/"}},
    "follow-up": {"question": "And what does E-4472 mean?", "condense": "join",
                  "history": [{"role": "user", "content": "What does Nimbus Vault error code E-4471 mean?"},
                              {"role": "assistant", "content": "A failed backup."}]},
}


def router(p: Pipeline) -> APIRouter:
    """The routes, bound to the stages of ``p``."""
    r = APIRouter(tags=["rag"])
    max_body = p.cfg.ingress.max_body_bytes

    @r.post("/v1/retrieve", **operation(body=RetrieveRequest, response=RetrieveResponse, errors=(400, 404, 413),
                                        examples={"question": {"question": "Nimbus Vault error code E-4471",
                                                               "top_k": 3}}))
    async def retrieve(request: Request, who: Principal = p.access.requires("query")) -> RetrieveResponse:
        """Preprocess + encode + search: the passages a question would be answered from."""
        body = await http.read_json(request, RetrieveRequest, max_body)
        got = await p.retrieve(body.question, body, tuple(body.history or ()), who)
        return RetrieveResponse(sources=Source.numbered(got.result.hits), mode=got.result.mode,
                                query_tokens=list(got.prepared.tokens), search_query=got.search_query,
                                encoder=got.result.encoder)

    @r.post("/v1/query", **operation(body=QueryRequest, response=QueryResponse, errors=(400, 404, 413),
                                     stream="`event: sources` (QuerySourcesEvent), `data: {\"delta\"}`..., "
                                     "`event: done` (QueryDoneEvent), or `event: error` (ErrorResponse)",
                                     events=(QuerySourcesEvent, DeltaEvent, QueryDoneEvent, ErrorResponse),
                                     examples=QUERY_EXAMPLES))
    async def query(request: Request, who: Principal = p.access.requires("query")) -> Any:
        """Answer a question from retrieved passages, citing them; ``stream`` gives SSE."""
        body = await http.read_json(request, QueryRequest, max_body)
        sampling = p.sampling(body)
        history = tuple(body.history or ())
        got = await p.retrieve(body.question, body, history, who)
        # The caller's own text that can overflow the context: a question is capped by preprocess
        # (max_query_chars) to fit, so with earlier turns it is the history that does not.
        gen = GenerationRequest(rag=p.rag_prompt(body.question, got.result.hits, history), sampling=sampling,
                                request_id=http.request_id(request), prompt_param="history" if history else "question")
        context, chunks = await p.start(gen, who)
        if body.stream:
            return http.stream(_query_events(p, gen.request_id, got, context, chunks))
        out = await p.collect(chunks)
        answer = out.text()
        return QueryResponse(
            id=gen.request_id, answer=answer, sources=Source.numbered(got.result.hits), context=context,
            cited=prompt.cited_sources(answer, len(got.result.hits)), grounded_in=p.grounding(answer, got.result.hits),
            finish_reason=out.finish.get(0), usage=Usage.of(out.prompt_tokens, out.completion_tokens),
            search_query=got.search_query, encoder=got.result.encoder)

    @r.post("/v1/generate", **operation(body=GenerateRequest, response=GenerateResponse, errors=(400, 413),
                                        stream="`data: {\"delta\"}`..., `event: done` (GenerateDoneEvent)",
                                        events=(DeltaEvent, GenerateDoneEvent, ErrorResponse)))
    async def generate(request: Request, who: Principal = p.access.requires("query")) -> Any:
        """The generator alone: the prompt goes to the model as is, without retrieval."""
        body = await http.read_json(request, GenerateRequest, max_body)
        if not body.prompt.strip():
            raise InvalidRequestError("prompt is empty", param="prompt")
        messages = ([ChatMessage(role="system", content=body.system)] if body.system else []) + [
            ChatMessage(role="user", content=body.prompt)]
        gen = GenerationRequest(messages=tuple(messages), sampling=p.sampling(body),
                                request_id=http.request_id(request), prompt_param="prompt")
        _, chunks = await p.start(gen, who)
        if body.stream:
            return http.stream(_generate_events(chunks))
        out = await p.collect(chunks)
        return GenerateResponse(id=gen.request_id, text=out.text(), finish_reason=out.finish.get(0),
                                usage=Usage.of(out.prompt_tokens, out.completion_tokens))

    return r


async def _query_events(p: Pipeline, request_id: str, got: Retrieval, context: PackedContext | None,
                        chunks: AsyncIterator[GenerationChunk]) -> AsyncIterator[str]:
    hits = got.result.hits
    yield http.sse(QuerySourcesEvent(id=request_id, sources=Source.numbered(hits), context=context,
                                     search_query=got.search_query, encoder=got.result.encoder), event="sources")
    parts: list[str] = []
    finish: str | None = None
    async for chunk in chunks:
        parts.append(chunk.text)
        if chunk.text:
            yield http.sse(DeltaEvent(delta=chunk.text))
        finish = chunk.finish_reason or finish
        if chunk.done:
            answer = "".join(parts)
            yield http.sse(QueryDoneEvent(
                finish_reason=finish, usage=Usage.of(chunk.prompt_tokens, chunk.completion_tokens),
                cited=prompt.cited_sources(answer, len(hits)), grounded_in=p.grounding(answer, hits)), event="done")


async def _generate_events(chunks: AsyncIterator[GenerationChunk]) -> AsyncIterator[str]:
    finish: str | None = None
    async for chunk in chunks:
        if chunk.text:
            yield http.sse(DeltaEvent(delta=chunk.text))
        finish = chunk.finish_reason or finish
        if chunk.done:
            yield http.sse(GenerateDoneEvent(finish_reason=finish,
                                             usage=Usage.of(chunk.prompt_tokens, chunk.completion_tokens)), "done")
