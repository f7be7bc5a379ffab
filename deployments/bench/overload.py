"""``ragserve bench --mode overload``: does the app shed past its capacity and keep its budget?

For each target, against a running app:

1. **capacity**: closed loops at the given concurrencies; the capacity is the best rate of
   successful requests (a closed loop cannot overload the server, it slows down with it);
2. **overload steps**: open-loop Poisson arrivals at 1x, 2x, 4x ... that capacity, whatever the
   responses do; meanwhile one sequential probe asks ``/v1/retrieve`` and one ``/healthz``, to
   show whether cheap calls starve behind queued generations.

Per step it reports offered vs admitted (200) vs rejected (by status), whether every rejection
carried ``Retry-After`` and the one error shape, how long a rejection took (it should be
immediate), and p50/p99 of the admitted requests (latency to the last byte, and time to first
token for generation) against the configured budget: ``generator.ttft_budget_s`` for generation
(the longest estimated time to first token a generation is admitted with), ``ingress.retrieve_budget_s``
for retrieval (the longest estimated latency a retrieval is admitted with).

The requests are sent with aiohttp, not httpx: at a few hundred requests/s httpx itself became
the queue being measured. In one server session with a 145/s cached-retrieval flood (AMD EPYC
Zen 4, 2 cores), Serve's proxy timed every admitted request at 1 s or less, while the httpx
generator saw admitted p50 440-670 ms and p99 1.9-4.2 s (connections kept alive or not, at
niceness 0 or 15; its event loop's lag99 51-401 ms); with aiohttp the same flood measured p50
108 ms and p99 680 ms, lag99 4 ms (docs/reliability.md, "Retrieval overload table").
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from deployments.bench import load
from deployments.bench.stats import percentile
from deployments.client import aiter_sse

#: Statuses that mean "shed": the server refused the request on purpose, telling when to retry.
SHED_STATUSES = (429, 503)
ERROR_KEYS = {"message", "type", "param", "code"}


@dataclass
class Outcome:
    """One request as the client saw it (status, headers, body shape), not only ok/failed."""

    start: float
    latency: float
    status: int  # 0: no HTTP response (connection error, client timeout)
    ttft: float | None = None
    retry_after: bool = False
    error_shape: bool = False  # a non-200 body is {"error": {message, type, param, code=status}}
    error: str = ""  # in-band stream error type, or the exception name when status is 0


def is_error_shape(status: int, text: str) -> bool:
    """Whether a non-200 body is the one error shape, its ``code`` equal to the status."""
    try:
        err = json.loads(text).get("error")
    except (ValueError, AttributeError):
        return False
    return isinstance(err, dict) and set(err) == ERROR_KEYS and err["code"] == status


#: Each target's route. As in ``load.TARGETS``: ``retrieve`` and ``query`` skip the retrieval cache
#: (``Cache-Control: no-cache``), so they load the stages; ``retrieve_cached`` asks the same questions
#: through the cache (they repeat: after the first round every one is a hit, and what is overloaded
#: is the proxy and the ingress themselves).
ROUTES = {"query": "/v1/query", "retrieve": "/v1/retrieve", "retrieve_cached": "/v1/retrieve",
          "generate": "/v1/generate"}


def _route(target: str) -> str:
    if target not in ROUTES:
        raise ValueError(f"overload targets are {', '.join(ROUTES)}, not {target!r}")
    return ROUTES[target]


def is_retrieval(target: str) -> bool:
    """Whether the target's whole latency is a retrieval (judged against the retrieval budget)."""
    return target.startswith("retrieve")


def make_call(target: str, questions: Sequence[str], max_tokens: int):
    """A coroutine factory sending request ``i`` of ``target`` and recording its :class:`Outcome`.

    Generation is streamed, so the time to first token is seen and admission is decided before
    the 200 (the ingress waits for the generator to admit a generation before it answers).
    """
    route = _route(target)
    headers = load.NO_CACHE if target in ("retrieve", "query") else {}

    async def call(session: aiohttp.ClientSession, i: int) -> Outcome:
        q = questions[i % len(questions)]
        body: dict[str, Any] = {"question": q} if target != "generate" else {"prompt": q}
        if not is_retrieval(target):
            body |= {"max_tokens": max_tokens, "temperature": 0.0, "stream": True}
        start = time.perf_counter()
        try:
            async with session.post(route, json=body, headers=headers) as r:
                if r.status != 200:
                    text = await r.text(errors="replace")
                    return Outcome(start, time.perf_counter() - start, r.status,
                                   retry_after="retry-after" in r.headers, error_shape=is_error_shape(r.status, text))
                ttft, error = await _read_events(r, start) if body.get("stream") else (None, "")
                if not body.get("stream"):
                    await r.read()
                return Outcome(start, time.perf_counter() - start, 200, ttft=ttft, error=error)
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            return Outcome(start, time.perf_counter() - start, 0, error=type(e).__name__)

    return call


def session(url: str, connections: int = 0) -> aiohttp.ClientSession:
    """A client session for ``url`` (``connections``: at most that many at once; 0: no limit, as an
    open loop needs: every arrival is sent when it arrives). Connections are kept alive."""
    return aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=connections),
                                 timeout=aiohttp.ClientTimeout(total=300))


async def _lines(r: aiohttp.ClientResponse) -> AsyncIterator[str]:
    async for raw in r.content:
        yield raw.decode("utf-8", "replace").rstrip("\r\n")


async def _read_events(r: aiohttp.ClientResponse, start: float) -> tuple[float | None, str]:
    """Read an SSE stream to its end: the time to the first text delta and any in-band error type."""
    ttft, error = None, ""
    async for event, data in aiter_sse(_lines(r)):
        if event == "" and ttft is None:
            ttft = time.perf_counter() - start
        elif event == "error":
            error = json.loads(data).get("error", {}).get("type", "stream_error")
    return ttft, error


@dataclass
class Probe:
    """A sequential probe of one cheap route while a step runs."""

    route: str
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)

    async def run(self, client: aiohttp.ClientSession, stop: asyncio.Event, pause_s: float = 0.2) -> None:
        body = {"question": "What does Nimbus Vault error code E-4471 mean?"}
        while not stop.is_set():
            t = time.perf_counter()
            try:
                request = client.post(self.route, json=body) if self.route != "/healthz" else client.get(self.route)
                async with request as r:
                    await r.read()
                self.statuses[r.status] += 1
                if r.status == 200:
                    self.latencies_ms.append((time.perf_counter() - t) * 1000)
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                self.statuses[type(e).__name__] += 1
            await asyncio.sleep(pause_s)

    def summary(self) -> dict[str, Any]:
        return {"n": sum(self.statuses.values()), "statuses": {str(k): v for k, v in self.statuses.items()},
                "p50_ms": percentile(self.latencies_ms, 50), "p99_ms": percentile(self.latencies_ms, 99)}


@dataclass
class OverloadStep:
    """One open-loop step at ``multiple`` x capacity."""

    target: str
    multiple: float
    offered_rps: float
    offered: int
    admitted: int  # 200 and the stream ended without an in-band error
    rejected: dict[str, int]  # shed (429/503) by status
    failed: dict[str, int]  # anything else: other statuses, in-band errors, client errors
    rejected_with_retry_after: int
    rejected_in_error_shape: int
    reject_p50_ms: float
    reject_p99_ms: float
    admitted_p50_ms: float
    admitted_p99_ms: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    admitted_rps: float
    budget_s: float
    within_budget: bool | None  # admitted p99 (TTFT for generation) <= budget; None without admitted requests
    probes: dict[str, dict[str, Any]] = field(default_factory=dict)
    # How late the load generator's own event loop ran (it shares the machine): a step whose
    # client lag is near the latencies measured says more about the client than the server.
    client_lag_p99_ms: float = math.nan
    client_lag_max_ms: float = math.nan


def summarize_step(target: str, multiple: float, rate: float, outcomes: Sequence[Outcome], elapsed_s: float,
                   budget_s: float) -> OverloadStep:
    """The table row of one step (pure: unit-tested on hand-made outcomes)."""
    admitted = [o for o in outcomes if o.status == 200 and not o.error]
    shed = [o for o in outcomes if o.status in SHED_STATUSES]
    failed = Counter(o.error or str(o.status) for o in outcomes
                     if not (o.status == 200 and not o.error) and o.status not in SHED_STATUSES)
    lat = [o.latency * 1000 for o in admitted]
    ttft = [o.ttft * 1000 for o in admitted if o.ttft is not None]
    # What admission bounds: the time to first token of a generation, the whole latency of a retrieval.
    bounded = lat if is_retrieval(target) else ttft
    p99 = percentile(bounded, 99)
    return OverloadStep(
        target=target, multiple=multiple, offered_rps=rate, offered=len(outcomes), admitted=len(admitted),
        rejected=dict(Counter(str(o.status) for o in shed)), failed=dict(failed),
        rejected_with_retry_after=sum(o.retry_after for o in shed),
        rejected_in_error_shape=sum(o.error_shape for o in shed),
        reject_p50_ms=percentile([o.latency * 1000 for o in shed], 50),
        reject_p99_ms=percentile([o.latency * 1000 for o in shed], 99),
        admitted_p50_ms=percentile(lat, 50), admitted_p99_ms=percentile(lat, 99),
        ttft_p50_ms=percentile(ttft, 50), ttft_p99_ms=percentile(ttft, 99),
        admitted_rps=len(admitted) / elapsed_s if elapsed_s > 0 else math.nan, budget_s=budget_s,
        within_budget=None if math.isnan(p99) else p99 <= budget_s * 1000)


async def capacity(url: str, call, concurrencies: Sequence[int], duration_s: float,
                   max_requests: int) -> tuple[float, dict[int, float]]:
    """The best rate of admitted requests over closed loops at ``concurrencies`` (and each rate)."""
    rates: dict[int, float] = {}
    async with session(url, 256) as client:
        await call(client, 0)  # warm-up
        for c in concurrencies:
            outcomes, elapsed = await load.closed_loop(call, client, c, duration_s, max_requests)
            ok = sum(o.status == 200 and not o.error for o in outcomes)
            rates[c] = ok / elapsed if elapsed > 0 else 0.0
            print(f"  capacity probe: concurrency {c}: {ok} ok of {len(outcomes)} in {elapsed:.1f}s = "
                  f"{rates[c]:.2f}/s", flush=True)
    return max(rates.values()), rates


async def loop_lag(stop: asyncio.Event, lags_ms: list[float], period_s: float = 0.05) -> None:
    """Until ``stop``: how late this event loop wakes from a ``period_s`` sleep, each time."""
    while not stop.is_set():
        t = time.perf_counter()
        await asyncio.sleep(period_s)
        lags_ms.append(max(0.0, time.perf_counter() - t - period_s) * 1000)


async def overload_step(url: str, target: str, call, multiple: float, rate: float, duration_s: float,
                        max_requests: int, budget_s: float, seed: int) -> OverloadStep:
    """Open-loop arrivals at ``rate`` with the retrieve and health probes running alongside."""
    lags: list[float] = []
    async with session(url) as client, session(url, 2) as probe_client:
        stop = asyncio.Event()
        probes = [Probe("/v1/retrieve"), Probe("/healthz")]
        running = [asyncio.create_task(p.run(probe_client, stop)) for p in probes]
        running.append(asyncio.create_task(loop_lag(stop, lags)))
        try:
            outcomes, elapsed = await load.open_loop(call, client, rate, duration_s, max_requests, seed=seed)
        finally:
            stop.set()
            await asyncio.gather(*running)
    step = summarize_step(target, multiple, rate, outcomes, elapsed, budget_s)
    step.probes = {p.route: p.summary() for p in probes}
    step.client_lag_p99_ms, step.client_lag_max_ms = percentile(lags, 99), max(lags, default=math.nan)
    return step


async def idle_probes(url: str, seconds: float) -> dict[str, dict[str, Any]]:
    """The probes alone, before any load: the baseline their overload figures are read against."""
    async with session(url, 2) as client:
        stop = asyncio.Event()
        probes = [Probe("/v1/retrieve"), Probe("/healthz")]
        running = [asyncio.create_task(p.run(client, stop)) for p in probes]
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*running)
    return {p.route: p.summary() for p in probes}


#: The config field holding each target's budget.
BUDGET_FIELDS = {"retrieve": "ingress.retrieve_budget_s", "retrieve_cached": "ingress.retrieve_budget_s",
                 "query": "generator.ttft_budget_s", "generate": "generator.ttft_budget_s"}


def budgets(cfg: Any) -> dict[str, float]:
    """Each target's budget from an :class:`~deployments.config.AppConfig`: a retrieval's whole
    latency (``ingress.retrieve_budget_s``; no admission: ``inf``), a generation's time to first token."""
    retrieve = cfg.ingress.retrieve_budget_s
    retrieve = math.inf if retrieve is None else retrieve
    return {"retrieve": retrieve, "retrieve_cached": retrieve, "query": cfg.generator.ttft_budget_s,
            "generate": cfg.generator.ttft_budget_s}


def run(url: str, targets: Sequence[str], multiples: Sequence[float], concurrencies: Sequence[int],
        duration_s: float, max_requests: int, max_tokens: int, budgets_s: dict[str, float],
        questions: Sequence[str]) -> list[dict[str, Any]]:
    """Capacity then the overload steps, per target; printed as they finish, returned for the report."""
    idle = asyncio.run(idle_probes(url, min(duration_s, 10.0)))
    print("idle probes: " + ", ".join(f"{k} p50 {v['p50_ms']:.0f} ms p99 {v['p99_ms']:.0f} ms (n={v['n']})"
                                      for k, v in idle.items()), flush=True)
    out: list[dict[str, Any]] = [{"target": "idle", "probes": idle}]
    for target in targets:
        call = make_call(target, questions, max_tokens)
        print(f"{target}: measuring capacity (closed loop)", flush=True)
        cap, by_c = asyncio.run(capacity(url, call, concurrencies, duration_s, max_requests))
        steps = []
        for i, m in enumerate(multiples):
            step = asyncio.run(overload_step(url, target, call, m, m * cap, duration_s, max_requests,
                                             budgets_s[target], i))
            print(format_step(step), flush=True)
            steps.append(asdict(step))
        out.append({"target": target, "capacity_rps": cap, "capacity_by_concurrency": by_c, "steps": steps})
    return out


HEADER = (f"{'target':8} {'x':>3} {'offer/s':>7} {'offered':>7} {'admit':>5} {'rejected':>14} {'RA':>4} "
          f"{'shape':>5} {'rej p99':>7} {'p50 ms':>8} {'p99 ms':>8} {'ttft50':>7} {'ttft99':>7} {'budget':>6} "
          f"{'ok?':>4} {'retrieve p50':>12} {'healthz p50':>11} {'lag99':>6}  other")


def format_step(s: OverloadStep) -> str:
    def f(x: float, w: int) -> str:
        return f"{'-':>{w}}" if x is None or math.isnan(x) else f"{x:{w}.0f}"

    rejected = ",".join(f"{k}:{v}" for k, v in sorted(s.rejected.items())) or "0"
    verdict = {True: "yes", False: "NO", None: "-"}[s.within_budget]
    return (f"{s.target:8} {s.multiple:3g} {s.offered_rps:7.2f} {s.offered:7d} {s.admitted:5d} {rejected:>14} "
            f"{s.rejected_with_retry_after:4d} {s.rejected_in_error_shape:5d} {f(s.reject_p99_ms, 7)} "
            f"{f(s.admitted_p50_ms, 8)} {f(s.admitted_p99_ms, 8)} {f(s.ttft_p50_ms, 7)} {f(s.ttft_p99_ms, 7)} "
            f"{s.budget_s:6g} {verdict:>4} {f(s.probes.get('/v1/retrieve', {}).get('p50_ms', math.nan), 12)} "
            f"{f(s.probes.get('/healthz', {}).get('p50_ms', math.nan), 11)} {f(s.client_lag_p99_ms, 6)}  "
            f"{s.failed or ''}")
