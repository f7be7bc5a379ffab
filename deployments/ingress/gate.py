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

It is installed in every proxy through Ray Serve's ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``
(declared in ``deployments/envs.py``), which imports :func:`proxy_middlewares`: this module
must stay light (no FastAPI app, no torch), it is imported by the proxy process.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HOLD_HEADER = "x-ragserve-hold-ms"
SCOPE_HEADER = "x-ragserve-hold-scope"
TENANT_HEADER = "x-ragserve-hold-tenant"
_PRIVATE = {HOLD_HEADER.encode(), SCOPE_HEADER.encode(), TENANT_HEADER.encode()}
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
    """

    def __init__(self, app: ASGIApp, max_keys: int = MAX_KEYS, clock: Callable[[], float] = time.monotonic,
                 on_refuse: Callable[[str], None] | None = None) -> None:
        self.app, self.max_keys, self.clock = app, max_keys, clock
        self.on_refuse = on_refuse or _count_refusal
        self.holds: OrderedDict[bytes, Hold] = OrderedDict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        auth = _header(scope, b"authorization") if scope["type"] == "http" else None
        if auth is None:
            await self.app(scope, receive, send)
            return
        key = hashlib.sha256(auth).digest()
        hold = self._held(key, scope.get("path", ""))
        if hold is not None:
            await self._refuse(hold, scope, send)
            return
        await self.app(scope, receive, self._watch(key, send))

    def _held(self, key: bytes, path: str) -> Hold | None:
        hold = self.holds.get(key)
        if hold is None:
            return None
        if self.clock() >= hold.until:
            del self.holds[key]
            return None
        return hold if path.startswith(hold.prefix + "/v1/") else None

    async def _refuse(self, hold: Hold, scope: Scope, send: Send) -> None:
        self.on_refuse(hold.tenant)
        rid = _header(scope, b"x-request-id") or uuid.uuid4().hex.encode()
        wait = max(1, math.ceil(hold.until - self.clock()))
        await send({"type": "http.response.start", "status": 429, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(hold.body)).encode()),
            (b"retry-after", str(wait).encode()), (b"x-request-id", rid[:64])]})
        await send({"type": "http.response.body", "body": hold.body})

    def _watch(self, key: bytes, send: Send) -> Send:
        """``send`` that strips the private headers of a refusal to remember, and records it."""
        seen: dict[str, str] = {}
        body = bytearray()

        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start" and message.get("status") == 429:
                headers = message.get("headers", [])
                seen.update({k.decode(): v.decode("latin-1") for k, v in headers if k in _PRIVATE})
                if seen:
                    message = {**message, "headers": [(k, v) for k, v in headers if k not in _PRIVATE]}
            elif message["type"] == "http.response.body" and seen:
                body.extend(message.get("body", b""))
                if not message.get("more_body", False):
                    self._remember(key, seen, bytes(body))
            await send(message)

        return watched

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


def _count_refusal(tenant: str) -> None:
    from deployments import metrics

    metrics.inc("rag_tenant_rejections_total", tenant=tenant, reason="rate_limit_error")


def proxy_middlewares() -> list[Middleware]:
    """What Serve's proxy wraps its app in (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``)."""
    return [Middleware(RefusalGate)]
