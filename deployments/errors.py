"""Typed errors raised by the stages.

Each carries its HTTP status and whether a retry may help; only the ingress turns them into
HTTP responses, with one JSON shape (vLLM's/OpenAI's):
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

from typing import Any


class RagServeError(Exception):
    """Base of every error a stage raises on purpose."""

    status: int = 500
    type: str = "internal_error"
    retriable: bool = False

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def body(self) -> dict[str, Any]:
        """The public JSON error body."""
        return error_body(self.message, self.type, self.status, self.param)

    def __reduce__(self):  # Ray pickles a replica's exception: keep every field, not only the message
        return (_rebuild, (type(self), self.message, dict(self.__dict__)))


def _rebuild(cls: type[RagServeError], message: str, fields: dict[str, Any]) -> RagServeError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(fields)
    return err


def error_body(message: str, type_: str, status: int, param: str | None = None) -> dict[str, Any]:
    """The one error shape every non-2xx response uses."""
    return {"error": {"message": message, "type": type_, "param": param, "code": status}}


class ConfigError(RagServeError):
    """The configuration is invalid; raised at start, never per request."""

    type = "config_error"


class InvalidRequestError(RagServeError):
    """The request is malformed or out of bounds (400)."""

    status = 400
    type = "invalid_request_error"


class PayloadTooLargeError(InvalidRequestError):
    """The request body or a field is larger than allowed (413)."""

    status = 413


class NotFoundError(RagServeError):
    """A named resource (collection, document) does not exist (404)."""

    status = 404
    type = "not_found_error"


class ConflictError(RagServeError):
    """The request conflicts with stored state, e.g. a collection of another schema (409)."""

    status = 409
    type = "conflict_error"


class UnauthorizedError(RagServeError):
    """No API key, or one that is not known (401)."""

    status = 401
    type = "authentication_error"


class ForbiddenError(RagServeError):
    """The key may not use this route or resource (403)."""

    status = 403
    type = "permission_error"


class _RetryAfter(RagServeError):
    """An error that tells the client when to retry (the Retry-After header)."""

    retriable = True

    def __init__(self, message: str, *, param: str | None = None, retry_after_s: float = 1.0) -> None:
        super().__init__(message, param=param)
        self.retry_after_s = retry_after_s  # sent as the Retry-After header


class RateLimitedError(_RetryAfter):
    """The key is over its rate limit or quota (429, retry later).

    A request-rate refusal also carries ``hold_s``, exactly how long until the key's next request
    would be admitted, and the key's ``tenant`` label: the HTTP proxy's gate
    (``deployments/ingress/gate.py``) refuses the key's repeats itself for that long.
    """

    status = 429
    type = "rate_limit_error"

    def __init__(self, message: str, *, param: str | None = None, retry_after_s: float = 1.0,
                 hold_s: float | None = None, tenant: str | None = None) -> None:
        super().__init__(message, param=param, retry_after_s=retry_after_s)
        self.hold_s, self.tenant = hold_s, tenant


class OverloadedError(_RetryAfter):
    """Too many requests queued (503, retry later)."""

    status = 503
    type = "overloaded_error"


class DependencyUnavailableError(RagServeError):
    """A dependency (Milvus, the engine, a replica) cannot be reached (503)."""

    status = 503
    type = "service_unavailable"
    retriable = True


class DependencyTimeoutError(RagServeError):
    """A dependency did not answer within its timeout (504)."""

    status = 504
    type = "timeout_error"
    retriable = True


def all_errors() -> tuple[type[RagServeError], ...]:
    """Every public error type (the tests check each one's status, shape and pickling)."""
    found, todo = [], [RagServeError]
    while todo:
        cls = todo.pop(0)
        found.append(cls)
        todo += cls.__subclasses__()
    return tuple(c for c in found if not c.__name__.startswith("_") and c.__module__ == __name__)
