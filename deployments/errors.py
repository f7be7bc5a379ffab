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

    def __reduce__(self):  # keep param across Ray's pickling
        return (_rebuild, (type(self), self.message, self.param))


def _rebuild(cls: type[RagServeError], message: str, param: str | None) -> RagServeError:
    return cls(message, param=param)


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


class OverloadedError(RagServeError):
    """Too many requests queued (503, retry later)."""

    status = 503
    type = "overloaded_error"
    retriable = True

    def __init__(self, message: str, *, param: str | None = None, retry_after_s: float = 1.0) -> None:
        super().__init__(message, param=param)
        self.retry_after_s = retry_after_s  # sent as the Retry-After header


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
