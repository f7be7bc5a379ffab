"""Does one key over its limit slow down the others? ``python -m deployments.bench.isolation``.

Against a running ragserve with API keys: a *victim* key asks ``/v1/retrieve`` one request at a
time, first alone, then while a *noisy* key floods the same route from many connections far
above its rate limit (it should get 429 with ``Retry-After``, before any work is done), then
alone again. Printed: the victim's p50/p95 in each phase, the noisy/quiet p50 ratio (the quiet
p50 is the mean of the phases before and after, to bracket drift), and what the noisy key got
(how many 200s and 429s, whether every 429 carried ``Retry-After``). Numbers, not a verdict:
this machine is noisy, so the ratio is reported, and read against the target (within 20%).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from typing import Any

import httpx

from deployments.bench.stats import percentile

QUESTIONS = ("What is the maximum water pressure of the VX-220 pump?", "What does error code E-4471 mean?",
             "How long is the warranty?", "设备的保修期是多久？")


def body(i: int, collection: str | None) -> dict[str, Any]:
    return {"question": QUESTIONS[i % len(QUESTIONS)], "top_k": 5} | ({"collection": collection} if collection else {})


async def victim(client: httpx.AsyncClient, key: str, n: int, collection: str | None = None) -> list[float]:
    """``n`` sequential retrievals; their latencies in ms (a failure stops the run)."""
    out = []
    for i in range(n):
        t = time.perf_counter()
        r = await client.post("/v1/retrieve", json=body(i, collection), headers={"authorization": f"Bearer {key}"})
        if r.status_code != 200:
            raise RuntimeError(f"the victim key got {r.status_code}: {r.text[:300]}")
        out.append((time.perf_counter() - t) * 1000)
    return out


async def flood(client: httpx.AsyncClient, key: str, stop: asyncio.Event, connections: int,
                collection: str | None = None) -> Counter[str]:
    """Retrievals from ``connections`` loops until ``stop``: counts by status, and 429s without
    ``Retry-After``."""
    got: Counter[str] = Counter()

    async def loop(i: int) -> None:
        while not stop.is_set():
            r = await client.post("/v1/retrieve", json=body(i, collection), headers={"authorization": f"Bearer {key}"})
            got[str(r.status_code)] += 1
            if r.status_code == 429 and not r.headers.get("retry-after"):
                got["429 without Retry-After"] += 1

    await asyncio.gather(*(loop(i) for i in range(connections)))
    return got


def summary(ms: list[float]) -> dict[str, float]:
    return {"n": len(ms), "p50_ms": round(percentile(ms, 50), 1), "p95_ms": round(percentile(ms, 95), 1)}


async def run(url: str, key: str, noisy_key: str, n: int, connections: int, collection: str | None = None,
              transport: httpx.AsyncBaseTransport | None = None) -> dict[str, Any]:
    """The three phases (see the module docstring); ``transport`` replaces the network in tests."""
    limits = httpx.Limits(max_connections=connections + 4)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits, transport=transport) as client:
        await victim(client, key, 3, collection)  # warm-up
        before = await victim(client, key, n, collection)
        stop = asyncio.Event()
        noisy = asyncio.create_task(flood(client, noisy_key, stop, connections, collection))
        await asyncio.sleep(1.0)  # let the flood start
        during = await victim(client, key, n, collection)
        stop.set()
        got = await noisy
        after = await victim(client, key, n, collection)
    quiet = (percentile(before, 50) + percentile(after, 50)) / 2
    return {"url": url, "connections": connections, "victim": {
                "before": summary(before), "during": summary(during), "after": summary(after),
                "p50_ratio_noisy_over_quiet": round(percentile(during, 50) / quiet, 3)},
            "noisy_key": dict(got)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--key", required=True, help="the victim's API key (no tight limit)")
    p.add_argument("--noisy-key", required=True, help="a key with a low requests_per_s")
    p.add_argument("--requests", type=int, default=60, help="victim requests per phase")
    p.add_argument("--connections", type=int, default=16, help="the noisy key's concurrent connections")
    p.add_argument("--collection", help="collection both keys search (default: the server's)")
    args = p.parse_args(argv)
    report = asyncio.run(run(args.url, args.key, args.noisy_key, args.requests, args.connections, args.collection))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
