"""The HTTP ingress: one FastAPI app in front of the four stage deployments.

Routes: ``/v1/query`` (retrieve + generate, optionally streamed as SSE), ``/v1/retrieve``,
``/v1/embeddings``, ``/v1/generate``, ``/v1/chat/completions`` (OpenAI-compatible, with the
sources), ``/v1/documents`` and ``/v1/collections`` (writes through the same stages, see
``deployments.ingest.online``), ``/healthz`` and ``/readyz``. Every stage call has a deadline,
so a stage that is down gives a fast 503/504 rather than a hanging client.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments import http
from deployments.config import AppConfig
from deployments.errors import (
    DependencyTimeoutError, InvalidRequestError, NotFoundError, OverloadedError, PayloadTooLargeError,
    RagServeError,
)
from deployments.generator import prompt
from deployments.ingest import online
from deployments.preprocess import text as analysis
from deployments.protocol import (
    COLLECTION_PATTERN, DOC_ID_PATTERN, ChatCompletionRequest, ChatMessage, CollectionRequest, DocumentsRequest,
    DocumentsResponse, EmbeddingData, EmbeddingsRequest, EmbeddingsResponse, GenerateRequest, GenerateResponse,
    GenerationChunk, GenerationRequest, Hit, PackedContext, QueryRequest, RagPrompt, QueryResponse, RetrievalFields, RetrieveRequest,
    RetrieveResponse, SamplingFields, SamplingParams, SearchRequest, Source, Usage,
)

MAX_EMBED_INPUTS = 256

api = FastAPI(title="ragserve", version="0.1.0")
api.add_middleware(http.IngressMiddleware)
api.add_exception_handler(RagServeError, lambda request, exc: http.error_response(exc))
api.add_exception_handler(StarletteHTTPException, http.http_exception_handler)


def _rid(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id", "")


def _usage(chunk: GenerationChunk) -> Usage:
    return Usage(prompt_tokens=chunk.prompt_tokens, completion_tokens=chunk.completion_tokens,
                 total_tokens=chunk.prompt_tokens + chunk.completion_tokens)


def _sources(hits: tuple[Hit, ...]) -> list[Source]:
    return [Source(n=i, **h.model_dump()) for i, h in enumerate(hits, start=1)]


def _path_param(value: str, pattern: str, name: str) -> str:
    if not re.fullmatch(pattern, value):
        raise InvalidRequestError(f"invalid {name} {value[:80]!r} (must match {pattern})", param=name)
    return value


@serve.deployment(name="ingress")
@serve.ingress(api)
class Ingress:
    """Composes the stages; holds only handles and the config, no models."""

    def __init__(self, preprocess: Any, encoder: Any, search: Any, generator: Any, cfg: AppConfig,
                 rerank: Any = None) -> None:
        self.preprocess, self.encoder, self.search, self.generator = preprocess, encoder, search, generator
        self.rerank = rerank  # None unless reranker.enabled
        self.cfg = cfg
        self.timeout = cfg.ingress.request_timeout_s
        self.max_body = cfg.ingress.max_body_bytes

    # ------------------------------------------------------------------ stage composition
    async def _call(self, response: Any, stage: str) -> Any:
        """Await a stage call under the ingress deadline (a timeout is a 504 naming the stage)."""
        try:
            async with asyncio.timeout(self.timeout):
                return await response
        except TimeoutError:
            response.cancel()
            raise DependencyTimeoutError(f"{stage} stage did not answer within {self.timeout}s") from None
        except Exception as exc:  # Ray/Serve errors become typed errors here, once
            raise http.as_ragserve_error(exc) from None

    async def _retrieve(self, question: str, where: RetrievalFields) -> tuple[Any, Any]:
        # Preprocess and encoder run concurrently: the encoder's input is the normalised question,
        # which is cheap and deterministic, so the critical path saves a whole stage hop. Only
        # questions within the length limit are sent ahead; preprocess still validates them all.
        pcfg = self.cfg.preprocess
        pre = self.preprocess.preprocess.remote(question)
        enc = None
        if len(question) <= pcfg.max_query_chars:
            enc = self.encoder.encode.remote(analysis.normalize(question, pcfg.unicode_form))
        try:
            prepared = await self._call(pre, "preprocess")
        except BaseException:
            if enc is not None:
                enc.cancel()
            raise
        vector = await self._call(enc or self.encoder.encode.remote(prepared.text), "encoder")
        top_k = where.top_k or self.cfg.search.top_k
        # With a reranker, search fetches more candidates and the reranker keeps the best top_k.
        fetch = max(top_k, self.cfg.reranker.candidates) if self.rerank is not None else top_k
        req = SearchRequest(query=prepared, vector=tuple(vector), top_k=fetch, mode=where.mode,
                            collection=where.collection, filter=where.filter)
        result = await self._call(self.search.search.remote(req), "search")
        if self.rerank is not None and result.hits:
            hits = await self._call(self.rerank.rerank.remote(prepared.text, result.hits, top_k), "rerank")
            result = result.model_copy(update={"hits": hits})
        return prepared, result

    def _sampling(self, f: SamplingFields) -> SamplingParams:
        d = self.cfg.generator.sampling
        max_tokens = f.max_tokens or d.max_tokens
        if max_tokens > d.max_tokens_limit:
            raise InvalidRequestError(f"max_tokens must be <= {d.max_tokens_limit}", param="max_tokens")
        return SamplingParams(
            max_tokens=max_tokens, max_tokens_is_default=f.max_tokens is None,
            temperature=d.temperature if f.temperature is None else f.temperature,
            top_p=d.top_p if f.top_p is None else f.top_p,
            stop=tuple(f.stop or ()),
            seed=f.seed,
        )

    async def _generate(self, req: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream from the generator under two deadlines: its first chunk, sent when a replica
        admits the request, within ``accept_timeout_s`` (else 503: no replica took it, or Serve's
        queue is full), every later one within ``request_timeout_s`` (else 504; the generator
        enforces its own first)."""
        g = self.cfg.generator
        stream = self.generator.options(stream=True).generate.remote(req)
        first = True
        while True:
            deadline = g.accept_timeout_s if first else g.request_timeout_s + 5
            try:
                async with asyncio.timeout(deadline):
                    chunk = await stream.__anext__()
            except StopAsyncIteration:
                return
            except TimeoutError:
                stream.cancel()
                if first:
                    raise OverloadedError(f"generator stage did not accept the generation within {deadline}s",
                                          retry_after_s=deadline) from None
                raise DependencyTimeoutError(f"generator stage did not answer within {deadline}s") from None
            except Exception as exc:
                raise http.as_ragserve_error(exc) from None
            first = False
            yield chunk

    async def _started(self, req: GenerationRequest) -> tuple[PackedContext | None, AsyncIterator[GenerationChunk]]:
        """The packed context and the rest of the stream, once the generator admitted the request:
        a generator that is down, overloaded or rejects the prompt is an HTTP error before a
        streaming response's 200 is sent."""
        chunks = self._generate(req)
        try:
            first = await chunks.__anext__()
        except StopAsyncIteration:
            first = GenerationChunk(text="")
        return first.context, chunks

    def _grounding(self, answer: str, hits: tuple[Hit, ...]) -> list[int]:
        pcfg = self.cfg.preprocess
        return prompt.grounding(answer, hits, lambda t: analysis.tokenize(analysis.normalize(t), pcfg))

    # ------------------------------------------------------------------ routes
    @api.post("/v1/retrieve", response_model=RetrieveResponse)
    async def retrieve(self, request: Request) -> RetrieveResponse:
        """Preprocess + encode + search: the passages a question would be answered from."""
        body = await http.read_json(request, RetrieveRequest, self.max_body)
        prepared, result = await self._retrieve(body.question, body)
        return RetrieveResponse(sources=_sources(result.hits), mode=result.mode, query_tokens=list(prepared.tokens))

    @api.post("/v1/embeddings", response_model=EmbeddingsResponse)
    async def embeddings(self, request: Request) -> EmbeddingsResponse:
        """OpenAI-style embeddings from the deployed encoder."""
        body = await http.read_json(request, EmbeddingsRequest, self.max_body)
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts or any(not t.strip() for t in texts):
            raise InvalidRequestError("input must be a non-empty string or list of non-empty strings", param="input")
        if len(texts) > MAX_EMBED_INPUTS:
            raise PayloadTooLargeError(f"at most {MAX_EMBED_INPUTS} inputs per request", param="input")
        vectors = await self._call(self.encoder.encode_many.remote(texts), "encoder")
        n_chars = sum(len(t) for t in texts)
        return EmbeddingsResponse(
            data=[EmbeddingData(index=i, embedding=v) for i, v in enumerate(vectors)],
            model=self.cfg.encoder.model,
            usage={"prompt_tokens": n_chars // 4, "total_tokens": n_chars // 4},  # estimate, as chars/4
        )

    @api.post("/v1/query", response_model=QueryResponse)
    async def query(self, request: Request) -> Any:
        """Answer a question from retrieved passages, citing them; ``stream`` gives SSE."""
        body = await http.read_json(request, QueryRequest, self.max_body)
        sampling = self._sampling(body)
        _, result = await self._retrieve(body.question, body)
        gen = GenerationRequest(rag=self._rag(body.question, result.hits), sampling=sampling,
                                request_id=_rid(request), prompt_param="question")
        sources = _sources(result.hits)
        context, chunks = await self._started(gen)
        if body.stream:
            return self._sse(self._query_events(gen, context, chunks, sources, result.hits))
        answer, last = await self._collect(chunks)
        return QueryResponse(
            id=gen.request_id, answer=answer, sources=sources, context=context,
            cited=prompt.cited_sources(answer, len(sources)), grounded_in=self._grounding(answer, result.hits),
            finish_reason=last.finish_reason, usage=_usage(last),
        )

    def _rag(self, question: str, hits: tuple[Hit, ...], history: tuple[ChatMessage, ...] = ()) -> RagPrompt:
        g = self.cfg.generator
        return RagPrompt(system_prompt=g.system_prompt, question=question, hits=hits, history=history,
                         passage_chars=g.passage_chars)

    @staticmethod
    async def _collect(chunks: AsyncIterator[GenerationChunk]) -> tuple[str, GenerationChunk]:
        parts: list[str] = []
        last = GenerationChunk(text="")
        async for chunk in chunks:
            parts.append(chunk.text)
            last = chunk
        return "".join(parts), last

    async def _query_events(self, gen: GenerationRequest, context: PackedContext | None,
                            chunks: AsyncIterator[GenerationChunk], sources: list[Source], hits: tuple[Hit, ...]):
        yield http.sse({"id": gen.request_id, "sources": [s.model_dump() for s in sources],
                        "context": context.model_dump() if context else None}, event="sources")
        parts: list[str] = []
        async for chunk in chunks:
            parts.append(chunk.text)
            if chunk.text:
                yield http.sse({"delta": chunk.text})
            if chunk.finish_reason is not None:
                answer = "".join(parts)
                yield http.sse({
                    "finish_reason": chunk.finish_reason, "usage": _usage(chunk).model_dump(),
                    "cited": prompt.cited_sources(answer, len(sources)),
                    "grounded_in": self._grounding(answer, hits),
                }, event="done")

    @api.post("/v1/generate", response_model=GenerateResponse)
    async def generate(self, request: Request) -> Any:
        """The generator alone: the prompt goes to the model as is, without retrieval."""
        body = await http.read_json(request, GenerateRequest, self.max_body)
        if not body.prompt.strip():
            raise InvalidRequestError("prompt is empty", param="prompt")
        messages = ([ChatMessage(role="system", content=body.system)] if body.system else []) + [
            ChatMessage(role="user", content=body.prompt)]
        gen = GenerationRequest(messages=tuple(messages), sampling=self._sampling(body), request_id=_rid(request),
                                prompt_param="prompt")
        _, chunks = await self._started(gen)
        if body.stream:
            return self._sse(self._generate_events(chunks))
        text, last = await self._collect(chunks)
        return GenerateResponse(id=gen.request_id, text=text, finish_reason=last.finish_reason, usage=_usage(last))

    async def _generate_events(self, chunks: AsyncIterator[GenerationChunk]):
        async for chunk in chunks:
            if chunk.text:
                yield http.sse({"delta": chunk.text})
            if chunk.finish_reason is not None:
                yield http.sse({"finish_reason": chunk.finish_reason, "usage": _usage(chunk).model_dump()}, "done")

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Any:
        """OpenAI chat completions; the last user message is retrieved for (unless ``retrieval``
        is false) and the sources come back in a ``sources`` field."""
        body = await http.read_json(request, ChatCompletionRequest, self.max_body)
        if body.messages[-1].role != "user" or not body.messages[-1].content.strip():
            raise InvalidRequestError("the last message must be a non-empty user message", param="messages")
        sampling = self._sampling(body)
        question, history = body.messages[-1].content, tuple(body.messages[:-1])
        hits: tuple[Hit, ...] = ()
        if body.retrieval:
            hits = (await self._retrieve(question, body))[1].hits
        gen = GenerationRequest(
            rag=self._rag(question, hits, history) if body.retrieval else None,
            messages=() if body.retrieval else tuple(body.messages),
            sampling=sampling, request_id=f"chatcmpl-{_rid(request)}",
        )
        sources = [s.model_dump() for s in _sources(hits)]
        model = body.model or self.cfg.generator.model
        context, chunks = await self._started(gen)
        if body.stream:
            return self._sse(self._chat_events(gen, chunks, model, sources, context))
        answer, last = await self._collect(chunks)
        return {
            "id": gen.request_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                         "finish_reason": last.finish_reason}],
            "usage": _usage(last).model_dump(), "sources": sources,
            "context": context.model_dump() if context else None,
            "cited": prompt.cited_sources(answer, len(sources)),
        }

    async def _chat_events(self, gen: GenerationRequest, chunks: AsyncIterator[GenerationChunk], model: str,
                           sources: list[dict], context: PackedContext | None):
        base = {"id": gen.request_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
        first = {"role": "assistant", "content": ""}
        yield http.sse({**base, "choices": [{"index": 0, "delta": first, "finish_reason": None}], "sources": sources,
                        "context": context.model_dump() if context else None})
        async for chunk in chunks:
            if chunk.text:
                yield http.sse({**base, "choices": [{"index": 0, "delta": {"content": chunk.text},
                                                      "finish_reason": None}]})
            if chunk.finish_reason is not None:
                yield http.sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": chunk.finish_reason}],
                                "usage": _usage(chunk).model_dump()})
        yield http.sse("[DONE]")

    def _sse(self, events: AsyncIterator[str]) -> StreamingResponse:
        async def guarded() -> AsyncIterator[str]:
            try:
                async for e in events:
                    yield e
            except Exception as exc:  # the 200 is already sent: report in-band, then end
                yield http.sse_error(exc)

        return StreamingResponse(guarded(), media_type="text/event-stream", headers={"cache-control": "no-cache"})

    # ------------------------------------------------------------------ documents and collections
    @api.post("/v1/documents", response_model=DocumentsResponse)
    async def upsert_documents(self, request: Request) -> DocumentsResponse:
        """Upsert documents: chunked by the encoder's tokenizer, analysed by preprocess, embedded
        by the encoder and written by search, each document replaced whole."""
        body = await http.read_json(request, DocumentsRequest, self.max_body)
        limit = self.cfg.ingest.max_documents_per_request
        if len(body.documents) > limit:
            raise PayloadTooLargeError(f"at most {limit} documents per request", param="documents")
        if len({d.id for d in body.documents}) != len(body.documents):
            raise InvalidRequestError("document ids must be unique within a request", param="documents")
        collection = body.collection or self.cfg.search.milvus.collection
        writer = online.DocumentWriter(self.preprocess, self.encoder, self.search, self._call, self.cfg)
        results = await writer.upsert(collection, body.documents)
        return DocumentsResponse(collection=collection, results=results)

    @api.delete("/v1/documents/{doc_id}")
    async def delete_document(self, doc_id: str, collection: str | None = None) -> dict[str, Any]:
        """Delete every chunk of a document (404 when it has none)."""
        _path_param(doc_id, DOC_ID_PATTERN, "doc_id")
        name = _path_param(collection, COLLECTION_PATTERN, "collection") if collection else None
        name = name or self.cfg.search.milvus.collection
        n = await self._call(self.search.delete_document.remote(name, doc_id), "search")
        if not n:
            raise NotFoundError(f"document '{doc_id}' is not in collection '{name}'", param="doc_id")
        return {"id": doc_id, "collection": name, "deleted_chunks": n}

    @api.get("/v1/collections")
    async def list_collections(self) -> dict[str, Any]:
        """The ragserve collections with their row counts."""
        return {"collections": await self._call(self.search.collections.remote(), "search"),
                "default": self.cfg.search.milvus.collection}

    @api.post("/v1/collections")
    async def create_collection(self, request: Request) -> JSONResponse:
        """Create a collection (201), or confirm it exists (200)."""
        body = await http.read_json(request, CollectionRequest, self.max_body)
        dim = (await self._call(self.encoder.info.remote(), "encoder"))["dim"]
        created = await self._call(self.search.create_collection.remote(body.name, dim), "search")
        return JSONResponse({"name": body.name, "created": created}, status_code=201 if created else 200)

    @api.delete("/v1/collections/{name}")
    async def drop_collection(self, name: str) -> dict[str, Any]:
        """Drop a collection and everything in it (404 when missing)."""
        _path_param(name, COLLECTION_PATTERN, "name")
        if not await self._call(self.search.drop_collection.remote(name), "search"):
            raise NotFoundError(f"collection '{name}' does not exist", param="name")
        return {"name": name, "dropped": True}

    # ------------------------------------------------------------------ health
    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        """Liveness: the ingress answers."""
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self) -> JSONResponse:
        """Readiness: every stage answers a cheap call within 5 s and Milvus is reachable."""
        checks = {
            "preprocess": self.preprocess.preprocess.remote("ready"),
            "encoder": self.encoder.info.remote(),
            "search": self.search.ready.remote(),
            "generator": self.generator.ready.remote(),
        }
        report: dict[str, Any] = {}
        for name, resp in checks.items():
            try:
                async with asyncio.timeout(5):
                    result = await resp
                report[name] = {"ok": True, **(result if isinstance(result, dict) else {})}
            except Exception as exc:  # readiness reports every failure, it does not raise
                resp.cancel()
                report[name] = {"ok": False, "error": http.as_ragserve_error(exc).message}
        ok = all(r["ok"] for r in report.values())
        return JSONResponse({"ready": ok, "stages": report}, status_code=200 if ok else 503)

