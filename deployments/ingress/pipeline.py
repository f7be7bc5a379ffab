"""Stage composition with deadlines: the one place the ingress talks to the stages.

Every route goes through a :class:`Pipeline`: retrieval (preprocess and encoder in parallel,
search, optional rerank), generation (admission, streaming, collection) and readiness. Each stage
call runs under a deadline and every failure becomes a typed error here, so the routes only
shape requests and responses.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from deployments import metrics, stages
from deployments.config import AppConfig
from deployments.errors import DependencyTimeoutError, OverloadedError
from deployments.generator import prompt
from deployments.ingress import http
from deployments.ingress.access import Access
from deployments.ingress.admission import RetrievalAdmission
from deployments.ingress.auth import OPEN, Principal
from deployments.ingress.cache import RetrievalCache
from deployments.preprocess import text as analysis
from deployments.protocol.api import RetrievalFields, SamplingFields, SearchQuery, StageReadiness
from deployments.protocol.stages import (
    Embeddings, GenerationChunk, GenerationRequest, Hit, PackedContext, PreparedQuery, QueryVector, RagPrompt,
    SamplingParams, SearchRequest, SearchResult,
)
from deployments.protocol.types import ENCODER_SEP, ChatMessage, encoded_collection, encoder_tag, split_encoded
from deployments.search import precision

READY_TIMEOUT_S = 5.0
# Waits (each jittered 0.5-1.5x) before a generation that Serve refused for its queue bound is sent
# again: a burst's assignments take a few replica round trips; a queue that is really full still
# answers 503 well under a second (Pipeline._generate).
BURST_RETRY_S = (0.05, 0.1, 0.2)


@dataclass
class Retrieval:
    """What one retrieval produced."""

    prepared: PreparedQuery
    result: SearchResult
    search_query: SearchQuery


@dataclass
class Collected:
    """A whole generation: each choice's text, finish reason and log probabilities, and the usage."""

    texts: dict[int, list[str]] = field(default_factory=dict)
    finish: dict[int, str | None] = field(default_factory=dict)
    logprobs: dict[int, list[Any]] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def text(self, index: int = 0) -> str:
        return "".join(self.texts.get(index, []))

    def add(self, chunk: GenerationChunk) -> None:
        self.texts.setdefault(chunk.index, []).append(chunk.text)
        self.logprobs.setdefault(chunk.index, []).extend(chunk.logprobs)
        if chunk.finish_reason is not None:
            self.finish[chunk.index] = chunk.finish_reason
        if chunk.done:
            self.prompt_tokens, self.completion_tokens = chunk.prompt_tokens, chunk.completion_tokens


class Metered:
    """A generation's chunks that settle the caller's quota exactly once when the generation is
    over: finished, failed, closed, or dropped unread (a client that went away)."""

    def __init__(self, chunks: AsyncIterator[GenerationChunk], settle: Callable[[int], None]) -> None:
        self.chunks, self.settle, self.used, self.settled = chunks, settle, 0, False

    def __aiter__(self) -> "Metered":
        return self

    async def __anext__(self) -> GenerationChunk:
        try:
            chunk = await self.chunks.__anext__()
        except BaseException:  # the end (StopAsyncIteration), an error or a cancellation
            self.close()
            raise
        if chunk.done:
            self.used = chunk.completion_tokens
        return chunk

    def close(self) -> None:
        if not self.settled:
            self.settled = True
            self.settle(self.used)

    def __del__(self) -> None:
        self.close()


#: Temperature of a request for several choices that sets none, when the default is greedy (OpenAI's default).
N_CHOICES_TEMPERATURE = 1.0


class Pipeline:
    """The stages behind the ingress, by registry name (``deployments.stages``).

    Args:
        handles: a DeploymentHandle per enabled stage.
        cfg: the whole application config.
        registry: the stage registry the app was built from (readiness checks its entries).
    """

    def __init__(self, handles: Mapping[str, Any], cfg: AppConfig,
                 registry: tuple[stages.Stage, ...] = stages.STAGES, access: Access | None = None) -> None:
        self.handles = dict(handles)
        self.cfg = cfg
        self.registry = registry
        self.access = access or Access(cfg.auth)
        self.timeout = cfg.ingress.request_timeout_s
        self.cache = RetrievalCache(cfg) if cfg.search.cache.enabled else None
        self.admission = RetrievalAdmission(cfg.ingress.retrieve_budget_s, cfg.ingress.retrieve_min_in_flight)
        #: The configured encoder's tag: whose copy of a collection this replica deletes from and
        #: lists (writes and searches follow the encoder replica that embedded them).
        self.encoder_tag = encoder_tag(cfg.encoder.model)

    # ------------------------------------------------------------------ calls
    async def call(self, response: Any, stage: str) -> Any:
        """Await a stage call under the ingress deadline (a timeout is a 504 naming the stage)."""
        try:
            async with asyncio.timeout(self.timeout):
                return await response
        except TimeoutError:
            response.cancel()
            raise DependencyTimeoutError(f"{stage} stage did not answer within {self.timeout}s") from None
        except Exception as exc:  # Ray/Serve errors become typed errors here, once
            raise http.as_ragserve_error(exc) from None

    async def embed(self, texts: list[str]) -> Embeddings:
        """Vectors of several texts (they join the encoder's batches) and the tokens read."""
        return await self.call(self.handles["encoder"].embed.remote(texts), "encoder")

    # ------------------------------------------------------------------ retrieval
    def collection(self, who: Principal, name: str | None, param: str = "collection") -> str:
        """The stored collection ``who`` means by ``name`` (default: the configured one): always
        inside its tenant's namespace, so no name reaches another tenant's collections, and never
        one encoder's copy by its own name (the copy is chosen by the encoder of each request).

        Raises:
            InvalidRequestError: a name that would name an encoder's copy.
        """
        from deployments.errors import InvalidRequestError

        if name and split_encoded(name)[1]:
            raise InvalidRequestError(f"collection names ending in {ENCODER_SEP}<16 hex digits> are reserved for "
                                      "the copies tuned encoders keep", param=param)
        return who.collection(name or self.cfg.search.milvus.collection)

    async def retrieve(self, question: str, where: RetrievalFields, history: tuple[ChatMessage, ...] = (),
                       who: Principal = OPEN, cached: bool = True) -> Retrieval:
        """Retrieve for ``question`` what ``who`` may read; after earlier turns (``history``), for
        the search query the conversation makes of it (``deployments.ingress.conversation``).
        ``cached`` false: not from the retrieval cache, nor into it (``Cache-Control: no-cache``)."""
        from deployments.ingress import conversation

        query = await conversation.search_query(self, question, history, where.condense, who)
        prepared, result = await self._cached_search(query.text, where, who, cached)
        return Retrieval(prepared, result, query)

    async def _cached_search(self, text: str, where: RetrievalFields, who: Principal,
                             cached: bool) -> tuple[PreparedQuery, SearchResult]:
        """:meth:`_search` through the retrieval cache (``cache.py``). The version token is read
        first and the stages run only after it (a retrieval stored under a token must have
        started after that token's write). An over-long question is not looked up: preprocess
        refuses it.

        Entries and tokens are those of this replica's encoder's copy of the collection (the copy
        its questions are searched in), and only a retrieval that copy answered is kept: while a
        rollout switches encoders, a vector may come from another encoder and be searched in
        its copy, and that result must never be served as this encoder's."""
        pcfg, cache = self.cfg.preprocess, self.cache
        if cache is None or not cached or len(text) > pcfg.max_query_chars:
            if cache is not None:
                cache.skipped()
            return await self._search(text, where, who)
        copy = encoded_collection(self.collection(who, where.collection), self.encoder_tag)
        key = cache.key(analysis.normalize(text, pcfg.unicode_form), copy, who.groups, where.filter,
                        where.mode or self.cfg.search.mode, where.top_k or self.cfg.search.top_k)
        token = await cache.token(copy)
        if (hit := cache.get(key, token)) is not None:
            return hit.prepared, hit.result
        prepared, result = await self._search(text, where, who)
        if token is not None and encoder_tag(result.encoder) == self.encoder_tag:
            cache.put(key, token, prepared, result)
        return prepared, result

    async def _search(self, text: str, where: RetrievalFields,
                      who: Principal) -> tuple[PreparedQuery, SearchResult]:
        # Admitted against the latency budget first: past it the answer is an immediate 503, not
        # a wait in the stages' queues (deployments/ingress/admission.py).
        with self.admission.admitted():
            return await self._search_stages(text, where, who)

    async def _search_stages(self, text: str, where: RetrievalFields,
                             who: Principal) -> tuple[PreparedQuery, SearchResult]:
        # Preprocess and encoder run concurrently: the encoder's input is the normalised question,
        # which is cheap and deterministic, so the critical path saves a whole stage hop. Only
        # questions within the length limit are sent ahead; preprocess still validates them all.
        pcfg = self.cfg.preprocess
        pre = self.handles["preprocess"].preprocess.remote(text)
        enc = None
        if len(text) <= pcfg.max_query_chars:
            enc = self.handles["encoder"].encode.remote(analysis.normalize(text, pcfg.unicode_form))
        try:
            prepared = await self.call(pre, "preprocess")
        except BaseException:
            if enc is not None:
                enc.cancel()
            raise
        vector: QueryVector = await self.call(enc or self.handles["encoder"].encode.remote(prepared.text), "encoder")
        top_k = where.top_k or self.cfg.search.top_k
        rerank = self.handles.get("rerank")
        # With a reranker, search fetches more candidates and the reranker keeps the best top_k.
        fetch = max(top_k, self.cfg.reranker.candidates) if rerank is not None else top_k
        # The tenant's collection and the key's groups are the mandatory part of the search: they
        # come from the key, never from the request, and the filter compiler keeps them apart.
        # The vector is searched in its own encoder's copy of the collection (several encoders answer
        # side by side while a tuned one is rolled out: deployments/tune/rollout.py).
        req = SearchRequest(query=prepared, vector=vector.values, top_k=fetch, mode=where.mode,
                            collection=self.collection(who, where.collection), encoder=vector.encoder,
                            filter=where.filter, acl=who.groups)
        result = await self.call(self.handles["search"].search.remote(req), "search")
        result = result.model_copy(update={"encoder": vector.model})
        if rerank is not None and result.hits:
            hits = await self.call(rerank.rerank.remote(prepared.text, result.hits, len(result.hits)), "rerank")
            result = result.model_copy(update={"hits": self.reranked(prepared, where.mode, hits)[:top_k]})
        return prepared, result

    def reranked(self, prepared: PreparedQuery, mode: str | None, hits: tuple[Hit, ...]) -> tuple[Hit, ...]:
        """The cross-encoder's order of a hybrid request's candidates with ``search.precision``
        re-applied (``reranker.precision``): a cross-encoder reads 3.4.0 and 3.4.1 as alike as
        the retrievers do, so the passage naming the question's exact terms must still come first."""
        scfg = self.cfg.search
        if not (self.cfg.reranker.precision and precision.applies(mode or scfg.mode, scfg.precision)):
            return hits
        return tuple(precision.reorder(hits, prepared.key_terms, scfg.precision, scfg.rrf_k))

    def grounding(self, answer: str, hits: tuple[Hit, ...]) -> list[int]:
        """Sources the answer is lexically drawn from (``generator.prompt.grounding``)."""
        pcfg = self.cfg.preprocess
        return prompt.grounding(answer, hits, lambda t: analysis.tokenize(analysis.normalize(t), pcfg))

    def rag_prompt(self, question: str, hits: tuple[Hit, ...], history: tuple[ChatMessage, ...] = ()) -> RagPrompt:
        g = self.cfg.generator
        return RagPrompt(system_prompt=g.system_prompt, question=question, hits=hits, history=history,
                         passage_chars=g.passage_chars)

    # ------------------------------------------------------------------ generation
    def sampling(self, f: SamplingFields, **extra: Any) -> SamplingParams:
        """Sampling parameters from a request's fields and the configured defaults."""
        return self.sampling_of(f.max_tokens, f.temperature, f.top_p, tuple(f.stop or ()), f.seed, **extra)

    def sampling_of(self, max_tokens: int | None, temperature: float | None, top_p: float | None,
                    stop: tuple[str, ...], seed: int | None, param: str = "max_tokens", **extra: Any) -> SamplingParams:
        """:meth:`sampling` from plain values (the OpenAI routes name their own limit field)."""
        from deployments.errors import InvalidRequestError

        d = self.cfg.generator.sampling
        if max_tokens is not None and max_tokens > d.max_tokens_limit:
            raise InvalidRequestError(f"{param} must be <= {d.max_tokens_limit}", param=param)
        if extra.get("n", 1) > 1:
            if temperature == 0:
                raise InvalidRequestError("n > 1 needs a temperature above 0: greedy decoding has one answer",
                                          param="n")
            # Several choices of a greedy server default would be one answer n times (vLLM refuses
            # it): without the caller's own temperature, sample at OpenAI's default instead.
            temperature = N_CHOICES_TEMPERATURE if temperature is None and d.temperature == 0 else temperature
        return SamplingParams(
            max_tokens=max_tokens or d.max_tokens, max_tokens_is_default=max_tokens is None,
            temperature=d.temperature if temperature is None else temperature,
            top_p=d.top_p if top_p is None else top_p, stop=stop, seed=seed, **extra)

    async def _generate(self, req: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """The generator's chunks, under two deadlines: its first message, sent when a replica
        admits the request, within ``accept_timeout_s`` (else 503: no replica took it, or Serve's
        queue is full), every later one within ``request_timeout_s`` (else 504; the generator
        enforces its own first). A message carries several chunks (``GenerationChunks``): a
        non-streamed request's whole generation is one.

        A generation Serve refuses as over ``max_queued_requests`` is sent again after a short
        wait, at most ``len(BURST_RETRY_S)`` times: Serve's router counts a request as queued until
        it is assigned, one replica round trip at a time, so a burst larger than the queue bound
        is refused even by a replica with free slots (ray/serve/_private/router.py says so). The
        retry tells such a burst from a full queue, which still answers 503 within about 0.4 s."""
        g = self.cfg.generator
        generator = self.handles["generator"].options(stream=True)
        stream = generator.generate.remote(req)
        first = True
        refused = 0
        try:
            while True:
                deadline = g.accept_timeout_s if first else g.request_timeout_s + 5
                try:
                    async with asyncio.timeout(deadline):
                        message = await stream.__anext__()
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    stream.cancel()
                    if first:
                        raise OverloadedError(f"generator stage did not accept the generation within {deadline}s",
                                              retry_after_s=deadline) from None
                    raise DependencyTimeoutError(f"generator stage did not answer within {deadline}s") from None
                except Exception as exc:  # the stream itself failed (or Serve refused it): nothing to cancel
                    if first and refused < len(BURST_RETRY_S) and http.is_backpressure(exc):
                        await asyncio.sleep(BURST_RETRY_S[refused] * random.uniform(0.5, 1.5))
                        refused += 1
                        stream = generator.generate.remote(req)
                        continue
                    raise http.as_ragserve_error(exc) from None
                first = False
                for chunk in message.chunks:
                    yield chunk
        except (GeneratorExit, asyncio.CancelledError):
            # The client went away: its task was cancelled while waiting for a chunk, or this
            # generator was closed between chunks. Serve does not pass that on to the generator
            # replica by itself (it tracks child requests only with direct ingress), so cancel
            # the stream: the replica's generate is cancelled and vLLM aborts the sequence,
            # instead of decoding to max_tokens for nobody.
            stream.cancel()
            raise

    async def start(self, req: GenerationRequest,
                    who: Principal = OPEN) -> tuple[PackedContext | None, AsyncIterator[GenerationChunk]]:
        """The packed context and the rest of the stream, once the generator admitted the request:
        a generator that is down, overloaded or rejects the prompt, or a key over its generation
        limits (429), is an HTTP error before a streaming response's 200 is sent."""
        reserved = req.sampling.max_tokens * req.sampling.n
        self.access.limiter.start_generation(who, reserved)
        chunks = self._generate(req)
        try:
            first = await chunks.__anext__()
        except StopAsyncIteration:
            first = GenerationChunk()
        except BaseException:
            self.access.limiter.end_generation(who, reserved, 0)
            raise
        return first.context, Metered(chunks, lambda used: self._settle(who, reserved, used))

    def _settle(self, who: Principal, reserved: int, used: int) -> None:
        self.access.limiter.end_generation(who, reserved, used)
        if used > 0:  # Ray counters take positive increments only
            metrics.inc("rag_tenant_generated_tokens_total", float(used), tenant=who.label)

    @staticmethod
    async def collect(chunks: AsyncIterator[GenerationChunk]) -> Collected:
        """The whole generation, for a non-streamed response."""
        out = Collected()
        async for chunk in chunks:
            out.add(chunk)
        return out

    # ------------------------------------------------------------------ readiness
    async def readiness(self) -> dict[str, StageReadiness]:
        """Each deployed stage's readiness call (``Stage.ready_call``), all at once, each within
        5 s; never raises: a failure is reported with its message."""
        async def check(spec: stages.Stage) -> StageReadiness:
            method = getattr(self.handles[spec.name], spec.ready_call)
            resp = method.remote(*(() if spec.ready_arg is None else (spec.ready_arg,)))
            try:
                async with asyncio.timeout(READY_TIMEOUT_S):
                    result = await resp
                return StageReadiness(ok=True, **(result if isinstance(result, dict) else {}))
            except Exception as exc:  # readiness reports every failure, it does not raise
                resp.cancel()
                return StageReadiness(ok=False, error=http.failure_message(exc))

        # An optional stage that is off has no handle; the ingress answers this check itself.
        checked = [s for s in self.registry if s.ready_call and s.name in self.handles]
        return dict(zip([s.name for s in checked], await asyncio.gather(*(check(s) for s in checked)), strict=True))
