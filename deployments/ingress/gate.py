"""The front-door gate: a key the ingress has just refused for its request rate is refused again
by Serve's HTTP proxy itself, until the ingress said it may come back.

Why: a refusal answered by the ingress still costs the whole path to it. Measured on a 2-core
AMD EPYC (Zen 4) with a key flooding ``/v1/retrieve`` at 50 requests/s far above its limit: each
429 cost 6.1 ms of CPU in the proxy and 6.0 ms in the ingress replica (the Ray call, Serve's
replica bookkeeping, FastAPI), taken from the cores every other caller's stages share. The gate
answers a repeat refusal inside the proxy, before Serve routes it anywhere.

How: the ingress stays the only authority on keys and limits. When its token bucket refuses a
key (``limits.RateLimiter.request``), its 429 carries private headers (:data:`HOLD_HEADER`: how
long until the key's next request would be admitted, exactly; :data:`SCOPE_HEADER`: the app's
route prefix; :data:`TENANT_HEADER`: the key's tenant label). The gate, an ASGI middleware
around the proxy's app, strips them from the response, remembers the refusal by a hash of the
``Authorization`` value, and replays the same body (with a ``Retry-After`` counted down) for
that value's ``/v1/`` requests under that prefix until the hold ends; then requests pass again
and the ingress decides. So the admitted rate is the bucket's, as without the gate; only the
cost of saying no moves. Quota and concurrency refusals are not remembered (they end when a
generation ends, which the gate cannot see). Health checks and the OpenAPI document are never
gated. Memory is bounded (:data:`MAX_KEYS` refused keys, oldest forgotten first).

The gate also sheds retrievals past the retrieval budget (``ingress.retrieve_budget_s``) before
they reach the ingress. The ingress's own admission (``admission.py``) counts only the work it
sends to the retrieval stages; a retrieval the ingress answers itself (a retrieval-cache hit) is
cheap there, but a flood of them saturates the proxy's and the ingress's event loops, and the
excess then waits in the proxy, where the ingress cannot see it. Measured on a 2-core AMD EPYC
(Zen 4) before the gate shed them: at 2x and 4x the capacity of repeated (cached) retrievals every
request was admitted, p50 18.6 s and 49.4 s against the 1 s budget. So the ingress tells the gate,
on every response of a route whose whole latency is one retrieval (:data:`BUDGET_HEADER`, stripped
here), the budget and the floor of retrievals always admitted; the gate then runs the same
Little's-law admission (:class:`~deployments.ingress.admission.RetrievalAdmission`) over what it
measures itself: that route's requests in flight through this proxy and their latency, cache hits
and queueing in front of the ingress included, plus what a request waited before the gate saw it
(:class:`LoopLag`: the proxy parses requests on the same event loop). A refused one gets the
admission's 503 with ``Retry-After`` in the one error shape, from the proxy.

Last, the gate keeps Serve's own answers in the one error shape (:func:`_shaped`): Serve's proxy
writes its errors as plain text (a 503 while the app is unavailable or past a queue bound, a 408
past ``request_timeout_s``, a 404 outside every route prefix), and when the replica handling a
request dies before answering it writes nothing, and uvicorn then sends a plain-text 500 (seen
in the chaos matrix when an ingress replica was killed). Those become the same status (a 503 with
``Retry-After: 1`` for the dead replica: a retry reaches a live one) in the JSON error shape.

It is installed in every proxy through Ray Serve's ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``
(declared in ``deployments/envs.py``), which imports :func:`proxy_middlewares`: this module
must stay light (no FastAPI app, no torch), it is imported by the proxy process.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.errors import (
    DependencyTimeoutError,
    DependencyUnavailableError,
    NotFoundError,
    OverloadedError,
    RagServeError,
    RateLimitedError,
    error_body,
)
from deployments.ingress.admission import RetrievalAdmission

HOLD_HEADER = "x-ragserve-hold-ms"
SCOPE_HEADER = "x-ragserve-hold-scope"
TENANT_HEADER = "x-ragserve-hold-tenant"
#: On the responses of a route whose whole latency is one retrieval: ``<budget ms>;<min in flight>``
#: (the ingress's retrieval admission), or ``off`` when it has no budget.
BUDGET_HEADER = "x-ragserve-retrieve-budget"
_PRIVATE = {HOLD_HEADER.encode(), SCOPE_HEADER.encode(), TENANT_HEADER.encode(), BUDGET_HEADER.encode()}
log = logging.getLogger(__name__)
#: The error type of a status Serve's proxy answers with by itself.
_TYPES = {404: NotFoundError.type, 408: DependencyTimeoutError.type, 429: RateLimitedError.type,
          503: DependencyUnavailableError.type, 504: DependencyTimeoutError.type}
#: What a client hears when the replica handling its request died before answering.
NO_ANSWER = ("the replica handling this request stopped before it answered (a replica restarting or "
             "replaced); retry it")
#: Paths with a retrieval admission at once (a route prefix per app makes a path per app and route).
MAX_PATHS = 64
#: Refused keys remembered at once; past it the oldest refusal is forgotten (its key then reaches
#: the ingress, which refuses it again: forgetting costs work, never correctness).
MAX_KEYS = 10_000
#: Longest hold honoured, whatever a response says (a bucket at 1 request/hour would say an hour).
MAX_HOLD_S = 60.0
_BODY_LIMIT = 4096  # an error body; anything longer is not a refusal to replay


@dataclass
class Hold:
    """One remembered refusal."""

    prefix: str
    until: float
    body: bytes
    tenant: str


class LoopLag:
    """How late this event loop runs what is due: about how long a request that arrives now waits
    (uvicorn reads and parses it on the same loop) before the gate sees it. A task sleeps
    :attr:`PERIOD` over and over and keeps its last overshoot; it starts on the first call in a
    loop."""

    PERIOD = 0.05

    def __init__(self) -> None:
        self.lag_s = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None  # referenced: the loop keeps only a weak one

    def __call__(self) -> float:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._task = loop, loop.create_task(self._sample())
        return self.lag_s

    async def _sample(self) -> None:
        while True:
            t = time.monotonic()
            await asyncio.sleep(self.PERIOD)
            self.lag_s = max(0.0, time.monotonic() - t - self.PERIOD)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope.get("headers", []):
        if k == name:
            return v
    return None


class RefusalGate:
    """Pure ASGI middleware (see the module docstring).

    Args:
        app: the proxy's ASGI app.
        max_keys: refusals remembered at once.
        clock: monotonic seconds (injected by tests).
        on_refuse: called with the tenant label of every refusal the gate answers itself.
        on_shed: called with the path of every retrieval the gate sheds itself.
        lag: seconds a request waited before the gate saw it (default: :class:`LoopLag`).
    """

    def __init__(self, app: ASGIApp, max_keys: int = MAX_KEYS, clock: Callable[[], float] = time.monotonic,
                 on_refuse: Callable[[str], None] | None = None,
                 on_shed: Callable[[str], None] | None = None, lag: Callable[[], float] | None = None) -> None:
        self.app, self.max_keys, self.clock = app, max_keys, clock
        self.lag = lag or LoopLag()
        self.on_refuse = on_refuse or _count_refusal
        self.on_shed = on_shed or _count_shed
        self.holds: OrderedDict[bytes, Hold] = OrderedDict()
        self.admissions: dict[str, RetrievalAdmission] = {}  # by path, learnt from BUDGET_HEADER

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        auth = _header(scope, b"authorization")
        key = hashlib.sha256(auth).digest() if auth is not None else None
        hold = self._held(key, path) if key is not None else None
        if hold is not None:
            self.on_refuse(hold.tenant)
            await _send_error(scope, send, 429, hold.body, math.ceil(hold.until - self.clock()))
            return
        admission = self.admissions.get(path) if scope.get("method") == "POST" else None
        if admission is None:
            await self._forward(scope, receive, send, key, path, {})
            return
        try:
            ticket = admission.admit(self.lag())
        except OverloadedError as err:
            self.on_shed(path)
            await _send_error(scope, send, err.status, json.dumps(err.body()).encode(), err.retry_after_s)
            return
        status: dict[str, int] = {}
        try:
            await self._forward(scope, receive, send, key, path, status)
        finally:  # also when the client went away or the app raised: the ticket must end
            admission.done(ticket, measured=status.get("code") == 200)

    async def _forward(self, scope: Scope, receive: Receive, send: Send, key: bytes | None, path: str,
                       status: dict[str, int]) -> None:
        """The proxy's app, with its private headers read (:meth:`_watch`) and its own errors in
        the one shape (:func:`_shaped`); a request it left unanswered gets a 503 (:data:`NO_ANSWER`)."""
        try:
            await self.app(scope, receive, _shaped(self._watch(key, path, send, status)))
        except Exception:
            if "code" in status:
                raise
            log.warning("request to %s failed before any response", path, exc_info=True)
        if "code" not in status:
            body = json.dumps(error_body(NO_ANSWER, DependencyUnavailableError.type, 503)).encode()
            await _send_error(scope, send, 503, body, 1)

    def _held(self, key: bytes, path: str) -> Hold | None:
        hold = self.holds.get(key)
        if hold is None:
            return None
        if self.clock() >= hold.until:
            del self.holds[key]
            return None
        return hold if path.startswith(hold.prefix + "/v1/") else None

    def _watch(self, key: bytes | None, path: str, send: Send, status: dict[str, int]) -> Send:
        """``send`` that strips the private headers: it learns the path's retrieval budget, and
        remembers a rate refusal of ``key``. ``status["code"]`` is the response's status."""
        seen: dict[str, str] = {}
        body = bytearray()

        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message.get("status", 0)
                headers = message.get("headers", [])
                private = {k.decode(): v.decode("latin-1") for k, v in headers if k in _PRIVATE}
                if private:
                    message = {**message, "headers": [(k, v) for k, v in headers if k not in _PRIVATE]}
                    if BUDGET_HEADER in private:
                        self._learn(path, private.pop(BUDGET_HEADER))
                    if key is not None and status["code"] == 429:
                        seen.update(private)
            elif message["type"] == "http.response.body" and seen:
                body.extend(message.get("body", b""))
                if not message.get("more_body", False):
                    self._remember(key, seen, bytes(body))
            await send(message)

        return watched

    def _learn(self, path: str, value: str) -> None:
        """Take up the budget the ingress announced for ``path`` (``off``: no admission there)."""
        if value == "off":
            self.admissions.pop(path, None)
            return
        try:
            budget_ms, floor = value.split(";")
            budget_s, min_in_flight = float(budget_ms) / 1000, int(floor)
        except ValueError:
            return  # not ours to guess: the ingress keeps its own admission
        admission = self.admissions.get(path)
        if admission is None:
            if len(self.admissions) >= MAX_PATHS:
                return
            admission = self.admissions[path] = RetrievalAdmission(budget_s, min_in_flight, clock=self.clock)
        admission.budget_s, admission.min_in_flight = budget_s, max(1, min_in_flight)

    def _remember(self, key: bytes, private: dict[str, str], body: bytes) -> None:
        try:
            hold_s = min(MAX_HOLD_S, float(private[HOLD_HEADER]) / 1000)
            json.loads(body)
        except (KeyError, ValueError):
            return  # not a refusal the gate can replay: the ingress keeps answering
        if hold_s <= 0 or len(body) > _BODY_LIMIT:
            return
        prefix = private.get(SCOPE_HEADER, "").rstrip("/")
        self.holds[key] = Hold(prefix, self.clock() + hold_s, body, private.get(TENANT_HEADER, "unknown"))
        self.holds.move_to_end(key)
        while len(self.holds) > self.max_keys:
            self.holds.popitem(last=False)


def _shaped(send: Send) -> Send:
    """``send`` that rewrites an error response written as plain text (Serve's proxy's own) into
    the one error shape: same status, the text as its message, other headers (``Retry-After``) kept."""
    held: dict[str, Any] = {}
    text = bytearray()

    async def shaped(message: Message) -> None:
        if message["type"] == "http.response.start" and message.get("status", 200) >= 400 and \
                (_header(message, b"content-type") or b"").startswith(b"text/plain"):
            held.update(message)
            return
        if not held or message["type"] != "http.response.body":
            await send(message)
            return
        text.extend(message.get("body", b""))
        if message.get("more_body", False):
            return
        code = held["status"]
        out = json.dumps(error_body(text.decode("utf-8", "replace")[:500] or f"HTTP {code}",
                                    _TYPES.get(code, RagServeError.type), code)).encode()
        headers = [(k, v) for k, v in held.get("headers", []) if k not in (b"content-type", b"content-length")]
        await send({"type": "http.response.start", "status": code, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(out)).encode()), *headers]})
        await send({"type": "http.response.body", "body": out})

    return shaped


async def _send_error(scope: Scope, send: Send, status: int, body: bytes, retry_after_s: float) -> None:
    """A refusal answered by the gate: the one error shape, ``Retry-After`` (at least 1 s) and the
    request id the proxy assigned."""
    rid = _header(scope, b"x-request-id") or uuid.uuid4().hex.encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(max(1, math.ceil(retry_after_s))).encode()), (b"x-request-id", rid[:64])]})
    await send({"type": "http.response.body", "body": body})


def _count_refusal(tenant: str) -> None:
    from deployments import metrics

    metrics.inc("rag_tenant_rejections_total", tenant=tenant, reason="rate_limit_error")


def _count_shed(path: str) -> None:
    from deployments import metrics

    metrics.inc("rag_proxy_shed_total", path=path)


def proxy_middlewares() -> list[Middleware]:
    """What Serve's proxy wraps its app in (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``)."""
    return [Middleware(RefusalGate)]
