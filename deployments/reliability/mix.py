"""A steady mixed load for fault drills and soaks: open-loop arrivals of several request kinds,
each outcome recorded as the client saw it (status, error shape, how a stream ended).

Kinds:

* ``retrieve``: ``POST /v1/retrieve``;
* ``query``: ``POST /v1/query``, not streamed;
* ``stream``: ``POST /v1/query`` streamed, read to its end: it must end with ``event: done`` or an
  in-band ``event: error`` (a stream that just stops is ``stream_cut``);
* ``abandon``: a streamed query the client closes after its first delta (a client going away);
* ``write``: ``POST /v1/documents`` (an update of one of a few documents) or, every fourth, a
  ``DELETE``, in a collection of the load's own.

The load runs in a thread with its own event loop, so the caller can kill processes and poll
health meanwhile. Every request has an overall client deadline: one still open after it is
``hung`` (the app's own deadlines are all shorter, so a hang is a defect, never a slow success).
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from deployments.bench.overload import is_error_shape
from deployments.client import aiter_sse

KINDS = ("retrieve", "query", "stream", "abandon", "write")
#: Documents the ``write`` kind cycles through (updates of a few ids, so the collection stays small).
WRITE_DOCS = 8


@dataclass
class Result:
    """One request as the client saw it.

    Attributes:
        status: the HTTP status; 0 when no response came (connection refused or reset, hung).
        error: "" for success; ``hung``, an exception name (no response), ``stream_error:<type>``
            (an in-band error event) or ``stream_cut`` (a stream that ended without its final event).
        shaped: a non-200 response's body is the one error shape (always true for a 200).
    """

    kind: str
    start: float
    end: float
    status: int
    error: str = ""
    shaped: bool = True
    retry_after: bool = False
    detail: str = ""  # the start of what the client got instead of success: an error message or body

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error

    @property
    def latency(self) -> float:
        return self.end - self.start

    @property
    def failure(self) -> str:
        """How it failed, as a table cell: the status, the in-band error or the client's error."""
        return self.error if self.error and (self.status in (0, 200)) else str(self.status)


@dataclass(frozen=True)
class Mix:
    """What the load sends.

    Attributes:
        weights: relative frequency of each kind (of :data:`KINDS`).
        max_tokens: tokens per generation (short: the load is about faults, not throughput).
        client_timeout_s: the overall deadline of one request; past it the request is ``hung``.
        collection: the collection ``write`` requests use (created at start, dropped at the end).
    """

    weights: Mapping[str, float]
    max_tokens: int = 16
    client_timeout_s: float = 60.0
    collection: str = "reliability_writes"

    def __post_init__(self) -> None:
        unknown = set(self.weights) - set(KINDS)
        if unknown or not any(w > 0 for w in self.weights.values()):
            raise ValueError(f"mix weights must name kinds of {KINDS} with some weight > 0: {dict(self.weights)}")

    @classmethod
    def parse(cls, text: str, **kw: Any) -> "Mix":
        """``kind=weight,...`` as on the command line, e.g. ``retrieve=2,query=1,stream=1``."""
        weights = {k.strip(): float(v) for k, v in (part.split("=") for part in text.split(",") if part.strip())}
        return cls(weights, **kw)

    def kind(self, rng: random.Random) -> str:
        kinds = [k for k in KINDS if self.weights.get(k, 0) > 0]
        return rng.choices(kinds, weights=[self.weights[k] for k in kinds])[0]


class Client:
    """Sends one request of a kind and records its :class:`Result`."""

    def __init__(self, mix: Mix, questions: Sequence[str]) -> None:
        self.mix, self.questions = mix, list(questions)

    async def prepare(self, client: httpx.AsyncClient) -> None:
        """Create the collection the ``write`` kind uses (when the mix writes)."""
        if self.mix.weights.get("write", 0) > 0:
            await client.post("/v1/collections", json={"name": self.mix.collection})

    async def cleanup(self, client: httpx.AsyncClient) -> None:
        """Drop the ``write`` kind's collection again."""
        if self.mix.weights.get("write", 0) > 0:
            await client.delete(f"/v1/collections/{self.mix.collection}")

    async def send(self, client: httpx.AsyncClient, kind: str, i: int) -> Result:
        start = time.monotonic()
        got = Result(kind, start, start, 0)
        try:
            async with asyncio.timeout(self.mix.client_timeout_s):
                await self._send(client, kind, i, got)
        except TimeoutError:
            got.error = "hung"
        except (httpx.HTTPError, ValueError) as e:
            # Before a status: refused, reset, garbled. After a streamed 200: the stream was cut.
            got.error = "stream_cut" if got.status == 200 else type(e).__name__
            got.detail = f"{type(e).__name__}: {e}"[:DETAIL_CHARS]
        got.end = time.monotonic()
        return got

    async def _send(self, client: httpx.AsyncClient, kind: str, i: int, got: Result) -> None:
        q = self.questions[i % len(self.questions)]
        if kind == "write":
            return await self._write(client, i, got)
        route, body = ("/v1/retrieve", {"question": q}) if kind == "retrieve" else (
            "/v1/query", {"question": q, "max_tokens": self.mix.max_tokens, "stream": kind != "query"})
        async with client.stream("POST", route, json=body) as r:
            got.status = r.status_code
            if r.status_code != 200:
                _refusal(got, r, (await r.aread()).decode("utf-8", "replace"))
            elif kind in ("retrieve", "query"):
                await r.aread()
            else:
                got.error, got.detail = await _read_stream(r, abandon=kind == "abandon")

    async def _write(self, client: httpx.AsyncClient, i: int, got: Result) -> None:
        doc = f"doc-{i % WRITE_DOCS}"
        if i % 4 == 3:
            r = await client.delete(f"/v1/documents/{doc}", params={"collection": self.mix.collection})
        else:
            text = f"Maintenance note {i} for {doc}: the pump at station {i % 97} was inspected on day {i}."
            r = await client.post("/v1/documents", json={"collection": self.mix.collection,
                                                         "documents": [{"id": doc, "text": text}]})
        # Deleting what is not there (yet) is an answer, not a failure.
        got.status = 200 if r.status_code == 404 and i % 4 == 3 else r.status_code
        if got.status != 200:
            _refusal(got, r, r.text)


#: Characters of an error kept in a result (the report shows one example per kind of failure).
DETAIL_CHARS = 200


def _refusal(got: Result, r: httpx.Response, text: str) -> None:
    """Record a non-200 response: whether it has the one shape and Retry-After, and its message."""
    got.shaped, got.retry_after = is_error_shape(r.status_code, text), "retry-after" in r.headers
    try:
        got.detail = json.loads(text)["error"]["message"][:DETAIL_CHARS]
    except (ValueError, KeyError, TypeError):
        got.detail = text[:DETAIL_CHARS]


async def _read_stream(r: httpx.Response, abandon: bool) -> tuple[str, str]:
    """Read an SSE stream: ("", "") when it ended with ``done`` (or, abandoning, at its first delta),
    ``stream_error:<type>`` and its message for an in-band error, ``stream_cut`` when it stopped
    without either."""
    async for event, data in aiter_sse(r.aiter_lines()):
        if event == "error":
            err = json.loads(data).get("error", {})
            return "stream_error:" + str(err.get("type", "?")), str(err.get("message", ""))[:DETAIL_CHARS]
        if event == "done" or (abandon and event == ""):
            return "", ""
    return "stream_cut", "the stream ended without its final event"


@dataclass
class Load:
    """Open-loop Poisson arrivals of ``mix`` at ``rate`` requests/s in a background thread,
    from :meth:`start` until :meth:`stop`.

    Args:
        url: the app's base URL (loopback).
        mix: what to send.
        rate: arrivals per second.
        questions: the question texts, cycled.
        seed: of the arrival times and kinds (a run is reproducible).
    """

    url: str
    mix: Mix
    rate: float
    questions: Sequence[str]
    seed: int = 0
    results: list[Result] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> "Load":
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="load", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[Result]:
        """Stop sending, wait for the requests in flight (each within its deadline), return all results."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.mix.client_timeout_s + 30)
        return sorted(self.results, key=lambda r: r.start)

    async def _run(self) -> None:
        rng = random.Random(self.seed)
        sender = Client(self.mix, self.questions)
        limits = httpx.Limits(max_connections=512, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=self.url, timeout=self.mix.client_timeout_s, limits=limits) as client:
            await sender.prepare(client)
            tasks: set[asyncio.Task[None]] = set()
            next_at, i = time.monotonic(), 0
            while not self._stop.is_set():
                next_at += rng.expovariate(self.rate)
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                task = asyncio.create_task(self._one(sender, client, self.mix.kind(rng), i))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            await asyncio.gather(*tasks)
            await sender.cleanup(client)

    async def _one(self, sender: Client, client: httpx.AsyncClient, kind: str, i: int) -> None:
        self.results.append(await sender.send(client, kind, i))


async def closed_loop_rate(url: str, mix: Mix, questions: Sequence[str], concurrency: int, duration_s: float,
                           seed: int = 0) -> tuple[float, list[Result]]:
    """Successful requests/s of ``concurrency`` clients sending the mix back to back (the capacity
    the drills' steady load is a fraction of), and every result."""
    rng = random.Random(seed)
    sender = Client(mix, questions)
    results: list[Result] = []
    deadline = time.monotonic() + duration_s
    async with httpx.AsyncClient(base_url=url, timeout=mix.client_timeout_s) as client:
        await sender.prepare(client)

        async def worker(w: int) -> None:
            i = w
            while time.monotonic() < deadline:
                results.append(await sender.send(client, mix.kind(rng), i))
                i += concurrency

        start = time.monotonic()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return sum(r.ok for r in results) / (time.monotonic() - start), results


def capacity(url: str, mix: Mix, questions: Sequence[str], concurrency: int = 4, duration_s: float = 20.0,
             log=print) -> float:
    """:func:`closed_loop_rate`, printed with what did not succeed."""
    from collections import Counter

    rate, results = asyncio.run(closed_loop_rate(url, mix, questions, concurrency, duration_s))
    failed = Counter(r.failure for r in results if not r.ok)
    log(f"capacity: {rate:.2f} successful requests/s at concurrency {concurrency} ({len(results)} requests"
        + (f"; failed: {dict(failed)}" if failed else "") + ")")
    return rate
