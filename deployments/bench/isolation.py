"""Does one key over its limit slow down the others? ``python -m deployments.bench.isolation``.

Against a running ragserve with API keys: a *victim* key asks ``/v1/retrieve`` one request at a
time, alone (quiet) and while a *noisy* key sends the same route at a fixed rate far above its
rate limit (it should get 429 with ``Retry-After``, before any work is done), in alternating
phases: quiet, then ``--rounds`` times noisy and quiet again, so drift of the machine falls on
both sides. Printed: the victim's p50/p95 in each phase and pooled per kind, the noisy/quiet p50
ratio (pooled), and what the noisy key got (how many 200s and 429s, whether every 429 carried
``Retry-After``, the rate it achieved). Numbers, not a verdict: this machine is noisy, so the
ratio is reported, and read against the target (within 20%).

The flood is open loop (``--rate`` requests/s, the noisy key's limit times a large factor) from
its own process (a second client, as in reality), so the victim's client never waits behind the
flood's, nor shares its GIL and garbage collections; a closed
loop of connections as fast as the server answers (``--rate 0``) measures instead how many
refusals the machine can answer at all, which on a 2-core machine shared by the client, the proxy
and every stage is a CPU denial of service, for a network-level limiter in front of the app.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import queue
import threading
import time
from collections import Counter
from typing import Any, Protocol

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


class Flag(Protocol):
    """A ``threading.Event`` or a ``multiprocessing`` one."""

    def is_set(self) -> bool: ...


async def flood(client: httpx.AsyncClient, key: str, stop: Flag, connections: int, rate: float,
                collection: str | None = None) -> Counter[str]:
    """Retrievals until ``stop``: at ``rate`` per second (open loop, at most ``connections`` in
    flight; ``rate`` 0: ``connections`` loops as fast as answered). Counts by status, and 429s
    without ``Retry-After``."""
    got: Counter[str] = Counter()
    slots = asyncio.Semaphore(connections)

    async def one(i: int) -> None:
        try:
            r = await client.post("/v1/retrieve", json=body(i, collection), headers={"authorization": f"Bearer {key}"})
        finally:
            slots.release()
        got[str(r.status_code)] += 1
        if r.status_code == 429 and not r.headers.get("retry-after"):
            got["429 without Retry-After"] += 1

    tasks, i, start = set(), 0, time.perf_counter()
    while not stop.is_set():
        if rate > 0:
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        await slots.acquire()
        task = asyncio.create_task(one(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        i += 1
    await asyncio.gather(*tasks)
    got["sent_per_s"] = round(i / (time.perf_counter() - start))
    return got


def _flood_main(url: str, key: str, started: Any, stop: Flag, connections: int, rate: float,
                collection: str | None, transport: httpx.AsyncBaseTransport | None, results: Any) -> None:
    """The body of :class:`Flood`'s process or thread: :func:`flood` on its own event loop."""
    async def go() -> None:
        limits = httpx.Limits(max_connections=connections)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits, transport=transport) as client:
            started.set()
            results.put(dict(await flood(client, key, stop, connections, rate, collection)))

    asyncio.run(go())


class Flood:
    """The noisy key's load, running until :meth:`stop`.

    In its own process, as a second client is in reality: in a thread of the victim's process the
    two clients would share one GIL and one garbage collector, so the flood's client could pause
    the victim's and be counted as the server's doing (or be slowed by it). A test
    that injects an in-process ``transport`` gets a thread instead (a transport does not cross
    processes).
    """

    def __init__(self, url: str, key: str, connections: int, rate: float, collection: str | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        if transport is None:
            ctx = multiprocessing.get_context("spawn")  # no fork of a process that runs threads
            self._started, self._stop, self._results = ctx.Event(), ctx.Event(), ctx.Queue()
            make: Any = ctx.Process
        else:
            self._started, self._stop, self._results = threading.Event(), threading.Event(), queue.Queue()
            make = threading.Thread
        self._worker = make(target=_flood_main, name="flood", daemon=True,
                            args=(url, key, self._started, self._stop, connections, rate, collection,
                                  transport, self._results))
        self._worker.start()

    @property
    def pid(self) -> int | None:
        """The flood's process id (None: a thread of this process)."""
        return getattr(self._worker, "pid", None)

    async def started(self, timeout_s: float = 60.0) -> None:
        """Wait until the flood's client exists (a spawned process takes a moment to import)."""
        if not await asyncio.to_thread(self._started.wait, timeout_s):
            raise RuntimeError(f"the flood did not start within {timeout_s:g} s")

    async def stop(self) -> dict[str, Any]:
        """Stop sending, wait for what is in flight; what the noisy key got."""
        self._stop.set()
        while True:
            try:
                got: dict[str, Any] = await asyncio.to_thread(self._results.get, timeout=1.0)
                break
            except queue.Empty:
                if not self._worker.is_alive():
                    raise RuntimeError("the flood ended without a result (see its traceback above)") from None
        await asyncio.to_thread(self._worker.join, 30)
        return got


def summary(ms: list[float]) -> dict[str, float]:
    return {"n": len(ms), "p50_ms": round(percentile(ms, 50), 1), "p95_ms": round(percentile(ms, 95), 1)}


async def run(url: str, key: str, noisy_key: str, n: int, connections: int, rate: float = 20.0,
              collection: str | None = None, transport: httpx.AsyncBaseTransport | None = None,
              rounds: int = 1) -> dict[str, Any]:
    """Quiet and noisy phases of ``n`` victim requests each, alternating: quiet, then ``rounds``
    times noisy + quiet (see the module docstring); ``transport`` replaces the network in tests.
    The ratio compares the p50 of every noisy phase's requests with that of every quiet phase's:
    alternating brackets the machine's drift, which one before/after pair may not."""
    phases: list[dict[str, Any]] = []
    got: Counter[str] = Counter()
    async with httpx.AsyncClient(base_url=url, timeout=60, transport=transport) as client:
        await victim(client, key, 3, collection)  # warm-up
        phases.append({"kind": "quiet", "ms": await victim(client, key, n, collection)})
        for _ in range(rounds):
            noisy = Flood(url, noisy_key, connections, rate, collection, transport)
            await noisy.started()
            await asyncio.sleep(1.0)  # let the flood reach its rate
            phases.append({"kind": "noisy", "ms": await victim(client, key, n, collection)})
            got.update(await noisy.stop())
            phases.append({"kind": "quiet", "ms": await victim(client, key, n, collection)})
    pooled = {kind: [ms for ph in phases if ph["kind"] == kind for ms in ph["ms"]] for kind in ("quiet", "noisy")}
    got["sent_per_s"] = round(got["sent_per_s"] / rounds)
    return {"url": url, "connections": connections, "rate_per_s": rate, "rounds": rounds, "victim": {
                "quiet": summary(pooled["quiet"]), "noisy": summary(pooled["noisy"]),
                "phases": [{"kind": ph["kind"], **summary(ph["ms"])} for ph in phases],
                "p50_ratio_noisy_over_quiet": round(percentile(pooled["noisy"], 50) / percentile(pooled["quiet"], 50), 3)},
            "noisy_key": dict(got)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--key", required=True, help="the victim's API key (no tight limit)")
    p.add_argument("--noisy-key", required=True, help="a key with a low requests_per_s")
    p.add_argument("--requests", type=int, default=30, help="victim requests per phase")
    p.add_argument("--rate", type=float, default=20.0,
                   help="the noisy key's requests per second (0: as fast as answered, --connections at once)")
    p.add_argument("--connections", type=int, default=16, help="the noisy key's most requests in flight")
    p.add_argument("--collection", help="collection both keys search (default: the server's)")
    p.add_argument("--rounds", type=int, default=3, help="noisy phases, each followed by a quiet one")
    args = p.parse_args(argv)
    report = asyncio.run(run(args.url, args.key, args.noisy_key, args.requests, args.connections, args.rate,
                             args.collection, rounds=args.rounds))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
