"""Unit tests of ``deployments.ingress.http``: body parsing, the one error mapping, SSE and request ids.

Covers: ``validation_error`` messages and ``param`` (unknown field, wrong type, malformed JSON),
``as_ragserve_error`` for typed errors and Ray Serve's own exceptions (backpressure,
unavailable deployment), timeouts and unexpected errors (500 without leaking details),
``error_response`` body, status and headers, ``request_id_of``, ``sse`` framing, and
``read_json`` on a real Starlette request fed in chunks (size limits checked while reading).
No Ray cluster is started: only exception classes are imported.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable

import pytest
from pydantic import ValidationError
from ray.serve._private.common import DeploymentID
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from starlette.requests import Request

from deployments.errors import InvalidRequestError, NotFoundError, PayloadTooLargeError
from deployments.ingress.http import (
    as_ragserve_error,
    cache_allowed,
    error_response,
    read_json,
    request_id_of,
    sse,
    validation_error,
)
from deployments.protocol.api import QueryRequest

HEX32 = re.compile(r"^[0-9a-f]{32}$")


def invalid(body: str) -> InvalidRequestError:
    with pytest.raises(ValidationError) as info:
        QueryRequest.model_validate_json(body)
    return validation_error(info.value)


# --------------------------------------------------------------------------- validation
def test_unknown_field_is_named() -> None:
    err = invalid('{"question": "q", "x": 1}')
    assert (err.message, err.param, err.status) == ("unknown field 'x'", "x", 400)


def test_wrong_type_names_the_field() -> None:
    err = invalid('{"question": 5}')
    assert err.param == "question"
    assert err.message.startswith("'question': ")
    assert invalid('{"question": "q", "top_k": "5"}').param == "top_k"  # strict: no coercion


def test_several_problems_are_counted() -> None:
    err = invalid('{"question": 5, "top_k": 0}')
    assert err.param == "top_k" and "(and 1 more problems)" in err.message  # the first in field order


def test_malformed_json() -> None:
    err = invalid('{"question": ')
    assert "not valid JSON" in err.message
    assert err.param is None


# --------------------------------------------------------------------------- error mapping
def test_typed_errors_pass_through() -> None:
    e = NotFoundError("no such collection", param="collection")
    assert as_ragserve_error(e) is e


def test_backpressure_is_503_with_retry_after() -> None:
    exc = BackPressureError(num_queued_requests=5, max_queued_requests=4, retry_after_s=2.0)
    err = as_ragserve_error(exc)
    assert (err.status, err.type, err.retriable) == (503, "overloaded_error", True)
    resp = error_response(exc)
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "2"
    assert "x-request-id" not in resp.headers  # Serve's proxy adds it to every response


def test_backpressure_without_retry_hint_still_sends_retry_after() -> None:
    resp = error_response(BackPressureError(num_queued_requests=5, max_queued_requests=4))
    assert resp.status_code == 503 and resp.headers["retry-after"] == "1"


def test_unauthorized_names_the_bearer_scheme() -> None:
    from deployments.errors import ForbiddenError, UnauthorizedError

    resp = error_response(UnauthorizedError("missing API key"))
    assert resp.status_code == 401 and resp.headers["www-authenticate"].startswith("Bearer")
    assert json.loads(resp.body)["error"]["type"] == "authentication_error"
    assert "www-authenticate" not in error_response(ForbiddenError("no scope")).headers


def test_timeout_is_504() -> None:
    err = as_ragserve_error(TimeoutError())
    assert (err.status, err.type) == (504, "timeout_error")
    assert err.message  # a default message, not an empty string
    assert as_ragserve_error(asyncio.TimeoutError("search took 9s")).message == "search took 9s"


def test_unavailable_deployment_is_503() -> None:
    err = as_ragserve_error(DeploymentUnavailableError(DeploymentID(name="x", app_name="y")))
    assert (err.status, err.type) == (503, "service_unavailable")


def test_unexpected_error_is_500_without_details() -> None:
    resp = error_response(KeyError("secret-api-key-123"))
    body = json.loads(resp.body)
    assert resp.status_code == 500
    assert body["error"]["type"] == "internal_error"
    assert "secret-api-key-123" not in resp.body.decode()
    assert "x-request-id" not in resp.headers and "retry-after" not in resp.headers


def test_error_response_shape() -> None:
    resp = error_response(InvalidRequestError("bad top_k", param="top_k"))
    assert json.loads(resp.body) == {
        "error": {"message": "bad top_k", "type": "invalid_request_error", "param": "top_k", "code": 400}
    }
    assert resp.status_code == 400


def test_validation_error_maps_to_400() -> None:
    with pytest.raises(ValidationError) as info:
        QueryRequest.model_validate_json('{"question": "q", "nope": 1}')
    err = as_ragserve_error(info.value)
    assert (err.status, err.param) == (400, "nope")


# --------------------------------------------------------------------------- request ids, sse
def test_request_id_kept_when_well_formed() -> None:
    scope = {"type": "http", "headers": [(b"accept", b"*/*"), (b"x-request-id", b"client-42.a:b_c")]}
    assert request_id_of(scope) == "client-42.a:b_c"


@pytest.mark.parametrize("bad", [b"has space", b"x" * 65, b"", b"semi;colon", b"caf\xc3\xa9"])
def test_request_id_replaced_when_invalid(bad: bytes) -> None:
    assert HEX32.match(request_id_of({"type": "http", "headers": [(b"x-request-id", bad)]}))


def test_request_id_new_when_missing() -> None:
    a, b = request_id_of({"type": "http", "headers": []}), request_id_of({"type": "http"})
    assert HEX32.match(a) and HEX32.match(b) and a != b


def test_sse_format() -> None:
    assert sse({"text": "长城 é"}) == 'data: {"text": "长城 é"}\n\n'
    assert sse("[DONE]") == "data: [DONE]\n\n"
    assert sse({"n": 1}, event="sources") == 'event: sources\ndata: {"n": 1}\n\n'


# --------------------------------------------------------------------------- read_json
def request(chunks: Iterable[bytes], headers: dict[str, str] | None = None) -> tuple[Request, list[int]]:
    """A real Starlette request whose body arrives in ``chunks``; the list counts reads."""
    parts, reads = list(chunks), [0]

    async def receive() -> dict:
        i = reads[0]
        reads[0] += 1
        if i >= len(parts):
            raise AssertionError("body read past its end")
        return {"type": "http.request", "body": parts[i], "more_body": i < len(parts) - 1}

    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {"type": "http", "method": "POST", "path": "/v1/query", "headers": raw, "query_string": b""}
    return Request(scope, receive), reads


def test_read_json_valid_body_in_chunks() -> None:
    body = '{"question": "café 长城?", "top_k": 3}'.encode()
    req, _ = request([body[:12], body[12:14], body[14:]])  # splits a multi-byte character
    got = asyncio.run(read_json(req, QueryRequest, max_bytes=1000))
    assert isinstance(got, QueryRequest)
    assert (got.question, got.top_k) == ("café 长城?", 3)


def test_read_json_stops_reading_over_limit() -> None:
    req, reads = request([b'{"question": "'] + [b"x" * 8] * 10 + [b'"}'])
    with pytest.raises(PayloadTooLargeError) as info:
        asyncio.run(read_json(req, QueryRequest, max_bytes=30))
    assert info.value.status == 413
    assert reads[0] < 5  # stopped as soon as the limit was passed, not after the whole body


def test_read_json_declared_length_over_limit_reads_nothing() -> None:
    req, reads = request([b"{}"], headers={"content-length": "5000"})
    with pytest.raises(PayloadTooLargeError, match="5000"):
        asyncio.run(read_json(req, QueryRequest, max_bytes=100))
    assert reads[0] == 0


def test_read_json_invalid_body_is_400() -> None:
    req, _ = request([b'{"question": "q", "x": 1}'])
    with pytest.raises(InvalidRequestError) as info:
        asyncio.run(read_json(req, QueryRequest, max_bytes=1000))
    assert (info.value.status, info.value.param) == (400, "x")
    assert not isinstance(info.value, PayloadTooLargeError)


@pytest.mark.parametrize(("header", "allowed"), [
    (None, True), (b"max-age=0", True), (b"no-cache", False), (b"No-Cache", False), (b"max-age=0, no-store", False),
    (b'no-cache="set-cookie"', False)])
def test_cache_control_no_cache_skips_the_retrieval_cache(header: bytes | None, allowed: bool) -> None:
    headers = [(b"cache-control", header)] if header is not None else []
    assert cache_allowed(Request({"type": "http", "headers": headers})) is allowed
