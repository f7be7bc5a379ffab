"""Load drivers: closed loop (fixed concurrency) and open loop (Poisson arrivals), on asyncio + httpx.

Why not locust: the targets stream server-sent events and we need the time to the first token
of each, an open-loop Poisson mode (locust's users are closed loops), and in-process baselines
in the same run and event loop; asyncio + httpx gives all three with one code path. Every run
is bounded in time and in request count, and only talks to the URL it is given.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import httpx

from deployments.bench.stats import Sample
from deployments.client import aiter_sse

#: ``retrieve`` and ``query`` skip the retrieval cache (``Cache-Control: no-cache``), so they measure
#: the stages; ``retrieve_cached`` asks the same questions through it (the questions repeat: after
#: the first round every retrieval is a hit). ``generate`` streams; ``generate_collected`` is the
#: same request not streamed (collected in the generator replica).
TARGETS = ("retrieve", "retrieve_cached", "embed", "generate", "generate_collected", "query")
#: Prefix of a mixed workload's target: ``mix:0.5`` is half retrievals, half RAG queries.
MIX = "mix:"
Request = Callable[[httpx.AsyncClient, int], Awaitable[Sample]]
S = TypeVar("S")  # what a loop's call returns: a Sample here, an overload Outcome
NO_CACHE = {"cache-control": "no-cache"}


def _payload(target: str, i: int, questions: Sequence[str], max_tokens: int) -> tuple[str, dict[str, Any]]:
    q = questions[i % len(questions)]
    if target.startswith("retrieve"):
        return "/v1/retrieve", {"question": q}
    if target == "embed":
        return "/v1/embeddings", {"input": q}
    if target.startswith("generate"):  # fixed prompts, no retrieval: the generator alone
        return "/v1/generate", {"prompt": q, "max_tokens": max_tokens, "temperature": 0.0,
                                "stream": target == "generate"}
    return "/v1/query", {"question": q, "max_tokens": max_tokens, "stream": True}


def is_retrieval(i: int, share: float) -> bool:
    """Whether request ``i`` of a ``mix:<share>`` workload is a retrieval (else a RAG query): spread
    evenly, so any ``n`` consecutive requests hold ``n * share`` retrievals, give or take one."""
    return math.floor((i + 1) * share) > math.floor(i * share)


def make_request(target: str, questions: Sequence[str], max_tokens: int = 32) -> Request:
    """A coroutine factory issuing request ``i`` of ``target`` and timing it. ``mix:<share>`` mixes
    ``retrieve`` (that share of the requests) and ``query`` (the rest), as ``ragserve capacity``'s
    ``--retrieval-share`` does."""
    if target.startswith(MIX):
        share = float(target[len(MIX):])
        if not 0 <= share <= 1:
            raise ValueError(f"{target}: the retrieval share must be within [0, 1]")
        retrieve, query = make_request("retrieve", questions), make_request("query", questions, max_tokens)

        async def mixed(client: httpx.AsyncClient, i: int) -> Sample:
            return await (retrieve if is_retrieval(i, share) else query)(client, i)

        return mixed
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose from {TARGETS} or {MIX}<retrieval share>")

    headers = NO_CACHE if target in ("retrieve", "query") else {}

    async def call(client: httpx.AsyncClient, i: int) -> Sample:
        route, body = _payload(target, i, questions, max_tokens)
        start = time.perf_counter()
        try:
            if not body.get("stream"):
                r = await client.post(route, json=body, headers=headers)
                ok = r.status_code == 200
                tokens = r.json().get("usage", {}).get("completion_tokens", 0) if ok else 0
                return Sample(start, time.perf_counter() - start, ok, output_tokens=tokens,
                              error="" if ok else str(r.status_code))
            return await _streamed(client, route, body, start, headers)
        except httpx.HTTPError as e:
            return Sample(start, time.perf_counter() - start, False, error=type(e).__name__)

    return call


async def _streamed(client: httpx.AsyncClient, route: str, body: dict, start: float, headers: dict) -> Sample:
    ttft = None
    tokens = 0
    async with client.stream("POST", route, json=body, headers=headers) as r:
        if r.status_code != 200:
            await r.aread()
            return Sample(start, time.perf_counter() - start, False, error=str(r.status_code))
        async for event, data in aiter_sse(r.aiter_lines()):
            if event == "" and ttft is None:
                ttft = time.perf_counter() - start
            elif event == "done":
                tokens = json.loads(data)["usage"]["completion_tokens"]
            elif event == "error":
                return Sample(start, time.perf_counter() - start, False, error="stream_error")
    return Sample(start, time.perf_counter() - start, True, ttft=ttft, output_tokens=tokens)


async def closed_loop(call: Callable[[Any, int], Awaitable[S]], client: Any, concurrency: int, duration_s: float,
                      max_requests: int) -> tuple[list[S], float]:
    """``concurrency`` workers, each sending its next request when the last one finished
    (``client``: whatever ``call`` sends with, an httpx client here, an aiohttp session in overload)."""
    samples: list[S] = []
    counter = iter(range(max_requests))
    deadline = time.perf_counter() + duration_s

    async def worker() -> None:
        for i in counter:
            if time.perf_counter() >= deadline:
                return
            samples.append(await call(client, i))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples, time.perf_counter() - start


async def open_loop(call: Callable[[Any, int], Awaitable[S]], client: Any, rate: float, duration_s: float,
                    max_requests: int, seed: int = 0) -> tuple[list[S], float]:
    """Poisson arrivals at ``rate`` requests/s for ``duration_s``, whatever the responses do
    (so queueing shows as latency, unlike a closed loop that slows down with the server)."""
    rng = random.Random(seed)
    tasks: list[asyncio.Task[S]] = []
    start = time.perf_counter()
    next_at = start
    for i in range(max_requests):
        next_at += rng.expovariate(rate)
        if next_at - start >= duration_s:
            break
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        tasks.append(asyncio.create_task(call(client, i)))
    samples = list(await asyncio.gather(*tasks))
    return samples, time.perf_counter() - start
