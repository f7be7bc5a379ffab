"""HTTP plumbing of the ingress: body parsing, the one error mapping, SSE, request ids, metrics.

Stages raise typed errors (``deployments.errors``) and Ray/Serve raise their own; this module
is the only place any of them becomes an HTTP status, always with the body
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import json
import math
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.routing import Match
from starlette.responses import JSONResponse, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments import metrics
from deployments.ingress import gate
from deployments.errors import (
    DependencyTimeoutError,
    DependencyUnavailableError,
    InvalidRequestError,
    OverloadedError,
    PayloadTooLargeError,
    RagServeError,
    RateLimitedError,
    error_body,
)

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


# --------------------------------------------------------------------------- request bodies
async def read_json(request: Request, model: type[M], max_bytes: int) -> M:
    """Read, size-check and validate a JSON body against a strict public model.

    Raises:
        PayloadTooLargeError: body over ``max_bytes`` (checked while reading, not after).
        InvalidRequestError: invalid UTF-8, malformed JSON, unknown field, wrong type or value;
            the message and ``param`` name the offending field.
    """
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLargeError(f"request body is {declared} bytes; the limit is {max_bytes}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise PayloadTooLargeError(f"request body is over the limit of {max_bytes} bytes")
    try:
        return model.model_validate_json(bytes(body))
    except ValidationError as e:
        raise validation_error(e) from None


def validation_error(e: ValidationError) -> InvalidRequestError:
    """The first validation problem as a 400 naming its field."""
    err = e.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "json_invalid":
        return InvalidRequestError(f"request body is not valid JSON: {err['msg']}")
    if err["type"] == "extra_forbidden":
        return InvalidRequestError(f"unknown field '{loc}'", param=loc)
    where = f"'{loc}'" if loc else "request body"
    more = f" (and {len(e.errors()) - 1} more problems)" if len(e.errors()) > 1 else ""
    return InvalidRequestError(f"{where}: {err['msg']}{more}", param=loc or None)


# --------------------------------------------------------------------------- error mapping
def as_ragserve_error(exc: BaseException) -> RagServeError:
    """Map any exception reaching the ingress to a typed error (and so a status code)."""
    from ray.exceptions import RayActorError, RayTaskError
    from ray.serve.exceptions import DeploymentUnavailableError

    if isinstance(exc, RayTaskError) and isinstance(exc.cause, BaseException):
        exc = exc.cause  # a stage's own error, raised in its replica
    if isinstance(exc, RagServeError):
        return exc
    if is_backpressure(exc):
        return OverloadedError(exc.message, retry_after_s=exc.retry_after_s or 1.0)
    if isinstance(exc, (DeploymentUnavailableError, RayActorError)):
        return DependencyUnavailableError(f"a stage is unavailable: {type(exc).__name__}")
    if isinstance(exc, TimeoutError):
        return DependencyTimeoutError(str(exc) or "a stage did not answer in time")
    if isinstance(exc, ValidationError):
        return validation_error(exc)
    log.exception("unexpected error", exc_info=exc)
    return RagServeError(f"internal error ({type(exc).__name__})")


def is_backpressure(exc: BaseException) -> bool:
    """Serve refused the call because the stage's queue (``max_queued_requests``) was full."""
    from ray.serve.exceptions import BackPressureError

    return isinstance(exc, BackPressureError)


def failure_message(exc: BaseException) -> str:
    """What went wrong, for an operator (readiness): a typed error's message, else the cause's
    own text (a stage's health check says why its engine is dead), cut to 300 characters."""
    from ray.exceptions import RayTaskError

    cause = exc.cause if isinstance(exc, RayTaskError) and isinstance(exc.cause, BaseException) else exc
    if isinstance(cause, RagServeError) or isinstance(as_ragserve_error(cause), (DependencyUnavailableError,
                                                                                 DependencyTimeoutError)):
        return as_ragserve_error(cause).message
    return f"{type(cause).__name__}: {cause}"[:300]


def error_response(exc: BaseException, request: Request | None = None) -> JSONResponse:
    """The HTTP response for an exception (the one place statuses are chosen). No request-id
    header here: Serve's proxy adds ``X-Request-Id`` to every response, errors included."""
    err = as_ragserve_error(exc)
    headers: dict[str, str] = {}
    retry_after = getattr(err, "retry_after_s", None)  # 429 and 503 that know when to come back
    if retry_after is not None:
        headers["retry-after"] = str(max(1, math.ceil(retry_after)))
    if err.status == 401:  # RFC 9110 11.6.1: a 401 names the scheme that would work (RFC 6750)
        headers["www-authenticate"] = 'Bearer realm="ragserve"'
    if isinstance(err, RateLimitedError) and err.hold_s and request is not None:
        # For the proxy's gate, which strips them: it refuses this key's repeats itself.
        headers[gate.HOLD_HEADER] = str(math.ceil(err.hold_s * 1000))
        headers[gate.SCOPE_HEADER] = request.scope.get("root_path", "")
        headers[gate.TENANT_HEADER] = err.tenant or "unknown"
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


def sse(data: Any, event: str | None = None) -> str:
    """One server-sent event; ``data`` is a model, JSON-encodable data or an already encoded string."""
    if isinstance(data, BaseModel):
        payload = data.model_dump_json()
    else:
        payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return (f"event: {event}\n" if event else "") + f"data: {payload}\n\n"


def stream(events: AsyncIterator[str]) -> StreamingResponse:
    """A server-sent event response. An error after the 200 was sent is reported in-band as an
    ``error`` event (the one error shape), then the stream ends."""
    async def guarded() -> AsyncIterator[str]:
        try:
            async for e in events:
                yield e
        except Exception as exc:  # the 200 is already sent: report in-band, then end
            yield sse_error(exc)

    return StreamingResponse(guarded(), media_type="text/event-stream", headers={"cache-control": "no-cache"})


def cache_allowed(request: Request) -> bool:
    """Whether the request lets the retrieval cache answer it: not with ``Cache-Control: no-cache``
    (or ``no-store``), RFC 9111's way for a client to ask for a fresh answer."""
    directives = {d.split("=", 1)[0].strip().lower() for d in request.headers.get("cache-control", "").split(",")}
    return not directives & {"no-cache", "no-store"}


def request_id(request: Request) -> str:
    """The request's id (set by :class:`IngressMiddleware`)."""
    return request.scope.get("state", {}).get("request_id", "")


def sse_error(exc: BaseException) -> str:
    """An error after streaming began (the status line is already sent): an ``error`` event."""
    return sse(as_ragserve_error(exc).body(), event="error")


# --------------------------------------------------------------------------- middleware
def request_id_of(scope: Scope) -> str:
    """The caller's ``X-Request-Id`` when well-formed (bounded charset, ≤64), else a new one."""
    for k, v in scope.get("headers", []):
        if k == b"x-request-id":
            value = v.decode("latin-1")
            if _REQUEST_ID_OK.match(value):
                return value
    return uuid.uuid4().hex


class IngressMiddleware:
    """Pure ASGI middleware: the request id, and end-to-end latency to the LAST byte.

    Serve's proxy already puts ``X-Request-Id`` on the request (the caller's, or a new one),
    echoes it on the response and tags every replica's log lines with it; this keeps the same
    id for response bodies and the engine. (Starlette's BaseHTTPMiddleware would time streaming
    responses only to their first byte.) The route label is the matched route's path template,
    so it stays bounded.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id_of(scope)
        scope.setdefault("state", {})["request_id"] = rid
        start = time.perf_counter()
        code = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", "unmatched")
            metrics.observe("rag_ingress_latency_seconds", time.perf_counter() - start, route=label, code=str(code))
            metrics.inc("rag_ingress_requests_total", route=label, code=str(code))
            tenant = scope.get("state", {}).get("tenant")  # set once the API key is known
            if tenant is not None:
                metrics.inc("rag_tenant_requests_total", tenant=tenant, route=label, code=str(code))


class SheddingMiddleware:
    """Refuses a request to a retrieval route at once, with the admission's 503, when the retrieval
    admission (``deployments/ingress/admission.py``) would refuse it: before routing, the key check
    and reading the body, which Serve fetches from the proxy with one more call. A refusal then
    costs the ingress (whose one event loop is the first thing a flood saturates) as little as it
    can; the requests let through are still admitted, or refused, by the pipeline itself.

    The responses of ``announced`` routes (those whose whole latency is one retrieval) carry the
    budget to the proxy's gate (``gate.BUDGET_HEADER``), which sheds them there too, measured on
    what it sees: cache hits and queueing in front of this replica included.

    Args:
        app: the app it wraps.
        admission: the pipeline's retrieval admission.
        routes: the routes it guards, by path (each one's route object labels its metrics).
        announced: paths of ``routes`` whose responses announce the budget.
    """

    def __init__(self, app: ASGIApp, admission: Any, routes: dict[str, Any], announced: frozenset[str]) -> None:
        self.app, self.admission, self.routes, self.announced = app, admission, routes, announced

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        route = self.routes.get(path)
        if route is None or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        if path in self.announced:
            send = self._announcing(send)
        if (err := self.admission.refusal()) is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = route
        await error_response(err)(scope, receive, send)

    def _announcing(self, send: Send) -> Send:
        budget = self.admission.budget_s
        value = b"off" if budget is None else f"{budget * 1000:g};{self.admission.min_in_flight}".encode()

        async def announcing(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (gate.BUDGET_HEADER.encode(), value)]}
            await send(message)

        return announcing


async def http_exception_handler(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI/Starlette-level errors (e.g. 404 route, 405 method) in the one error shape, with
    the exception's own headers (a 405 must say ``Allow``, RFC 9110 15.5.6)."""
    status = getattr(exc, "status_code", 500)
    headers = dict(getattr(exc, "headers", None) or {})
    if status == 405:
        headers["allow"] = ", ".join(allowed_methods(request))
    return JSONResponse(error_body(str(getattr(exc, "detail", exc)), "invalid_request_error", status), status,
                        headers=headers)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at the request's path. Starlette's own ``Allow`` names only
    the first route matching the path, and GET and POST /v1/collections are two routes."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if route.matches(request.scope)[0] != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


async def request_validation_handler(request: Request, exc: Exception) -> JSONResponse:
    """A path or query parameter FastAPI could not validate: a 400 naming it, not FastAPI's 422."""
    errors = getattr(exc, "errors", lambda: [])()
    first = errors[0] if errors else {}
    loc = ".".join(str(x) for x in first.get("loc", ())[1:])  # drop "path"/"query"
    return error_response(InvalidRequestError(f"'{loc}': {first.get('msg', 'invalid')}", param=loc or None))
