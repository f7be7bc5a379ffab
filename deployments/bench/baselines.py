"""Baselines measured in the same run as the load steps, so results are ratios, not absolutes.

(a) ``inprocess_retrieval``: the same stage code called in-process, sequentially, without Serve
    (preprocess → encoder → Milvus), against ``/v1/retrieve`` at concurrency 1.
(b) ``bare_vllm``: the vLLM engine driven directly (same model, prompts, sampling) at a given
    concurrency, against ``/v1/generate`` through Serve.
(c) ``encoder_batching``: the deployed (batched) encoder vs a temporary unbatched copy
    (``max_batch_size=1``), both driven through DeploymentHandles at the same concurrency.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from deployments.bench.stats import percentile
from deployments.config import AppConfig


def inprocess_retrieval(cfg: AppConfig, questions: Sequence[str], n: int) -> dict[str, float]:
    """Sequential in-process retrieval latency (ms) with the app's own stage code."""
    from deployments.encoder.model import Embedder
    from deployments.preprocess.text import prepare_query, warm_up
    from deployments.search.store import ChunkStore, connect

    warm_up()
    embedder = Embedder(cfg.encoder)
    store = ChunkStore(connect(cfg.search.milvus), cfg.search, embedder.dim, cfg.stored_copy())
    store.ensure_collection()
    lat = []
    for i in range(n + 2):
        t = time.perf_counter()
        q = prepare_query(questions[i % len(questions)], cfg.preprocess)
        vec = embedder.embed([q.text])[0]
        store.search(vec, q.lexical_text, cfg.search.top_k, cfg.search.mode)
        if i >= 2:  # first calls warm caches
            lat.append((time.perf_counter() - t) * 1000)
    return {"p50_ms": percentile(lat, 50), "p95_ms": percentile(lat, 95), "n": len(lat)}


def bare_vllm(cfg: AppConfig, prompts: Sequence[str], requests: dict[int, int], max_tokens: int) -> dict[str, object]:
    """Throughput and TTFT of the engine alone, same chat template and sampling as /v1/generate,
    for each ``{concurrency: requests}`` in turn (one engine, started once); plus the engine
    settings it resolved."""
    return asyncio.run(_bare_vllm(cfg, prompts, requests, max_tokens))


async def _bare_vllm(cfg: AppConfig, prompts: Sequence[str], requests: dict[int, int],
                     max_tokens: int) -> dict[str, object]:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    from deployments.generator.deployment import build_engine

    engine, settings = build_engine(cfg.generator, ray_metrics=False)
    tok = engine.tokenizer
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
             for p in prompts]
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, output_kind=RequestOutputKind.DELTA)

    async def step(concurrency: int, n: int) -> dict[str, float]:
        ttfts: list[float] = []
        tokens = 0
        counter = iter(range(n))

        async def worker() -> None:
            nonlocal tokens
            for i in counter:
                t, first = time.perf_counter(), None
                async for out in engine.generate(texts[i % len(texts)], params, f"bare-{concurrency}-{i}"):
                    if first is None:
                        first = time.perf_counter() - t
                    tokens += len(out.outputs[0].token_ids)
                ttfts.append(first * 1000)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        return {"tokens_per_s": tokens / elapsed, "requests_per_s": n / elapsed,
                "ttft_p50_ms": percentile(ttfts, 50), "concurrency": concurrency, "n": n}

    try:
        for i in range(2):  # warm up
            async for _ in engine.generate(texts[i], params, f"warm-{i}"):
                pass
        steps = {c: await step(c, n) for c, n in requests.items()}
    finally:
        engine.shutdown()
    return {"steps": steps, "engine": settings.model_dump(mode="json", exclude={"facts"})}


def encoder_batching(cfg: AppConfig, texts: Sequence[str], concurrency: int, n: int,
                     app_name: str = "ragserve") -> dict[str, float]:
    """Texts/s of the running app's encoder (batched) vs an unbatched copy deployed for this
    measurement and deleted after. Needs the Ray cluster of the app (``ray.init("auto")``)."""
    import ray
    from ray import serve

    from deployments.encoder.deployment import Encoder

    ray.init(address="auto", logging_level="ERROR")
    try:
        batched = serve.get_deployment_handle("encoder", app_name=app_name)
        unbatched_cfg = cfg.encoder.model_copy(update={"max_batch_size": 1})
        serve.run(Encoder.options(num_replicas=1, max_ongoing_requests=max(concurrency, 2),
                                  ray_actor_options={"num_cpus": 0}).bind(unbatched_cfg),
                  name="bench-unbatched-encoder", route_prefix=None)
        unbatched = serve.get_deployment_handle("encoder", app_name="bench-unbatched-encoder")
        result = {f"{name}_texts_per_s": asyncio.run(_drive(h, texts, concurrency, n))
                  for name, h in (("batched", batched), ("unbatched", unbatched))}
        serve.delete("bench-unbatched-encoder")
    finally:
        ray.shutdown()
    result["speedup"] = result["batched_texts_per_s"] / result["unbatched_texts_per_s"]
    result["concurrency"] = concurrency
    return result


async def _drive(handle, texts: Sequence[str], concurrency: int, n: int) -> float:
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            await handle.encode.remote(texts[i % len(texts)])

    await asyncio.gather(*(handle.encode.remote(t) for t in texts[:8]))  # warm up
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - start)
