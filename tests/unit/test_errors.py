"""Unit tests of ``deployments.errors``: typed stage errors and the one public error shape.

Covers: each class's HTTP status, type and ``retriable``; the exact ``body()`` shape
``{"error": {"message", "type", "param", "code"}}``; and that every error survives pickling and
Ray's cloudpickle (Ray ships exceptions raised in a replica) with every field intact.
"""

from __future__ import annotations

import inspect
import pickle
from collections.abc import Callable

import pytest
from ray import cloudpickle

from deployments.errors import (
    ConfigError,
    ConflictError,
    DependencyTimeoutError,
    DependencyUnavailableError,
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    RagServeError,
    RateLimitedError,
    UnauthorizedError,
    all_errors,
    error_body,
)

ERRORS = [
    # (class, status, retriable)
    (InvalidRequestError, 400, False),
    (UnauthorizedError, 401, False),
    (ForbiddenError, 403, False),
    (NotFoundError, 404, False),
    (ConflictError, 409, False),
    (PayloadTooLargeError, 413, False),
    (RateLimitedError, 429, True),
    (OverloadedError, 503, True),
    (DependencyUnavailableError, 503, True),
    (DependencyTimeoutError, 504, True),
    (ConfigError, 500, False),
    (RagServeError, 500, False),
]


def test_the_table_covers_every_error_type() -> None:
    assert {cls for cls, _, _ in ERRORS} == set(all_errors())


@pytest.mark.parametrize(("cls", "status", "retriable"), ERRORS, ids=lambda v: getattr(v, "__name__", ""))
def test_status_and_retriable(cls: type[RagServeError], status: int, retriable: bool) -> None:
    err = cls("boom")
    assert isinstance(err, RagServeError)
    assert err.status == status
    assert err.retriable is retriable
    assert err.body()["error"]["code"] == status


def test_payload_too_large_is_an_invalid_request() -> None:
    # The ingress may catch InvalidRequestError for every bad input and still answer 413 here.
    err = PayloadTooLargeError("too long", param="question")
    assert isinstance(err, InvalidRequestError)
    assert err.type == "invalid_request_error"


def test_body_shape() -> None:
    err = InvalidRequestError("top_k must be at most 50", param="top_k")
    body = err.body()
    assert body == {
        "error": {
            "message": "top_k must be at most 50",
            "type": "invalid_request_error",
            "param": "top_k",
            "code": 400,
        }
    }
    assert list(body) == ["error"]


def test_body_without_param_has_null_param() -> None:
    body = DependencyTimeoutError("milvus did not answer in 5 s").body()
    assert body["error"]["param"] is None
    assert body["error"]["code"] == 504
    assert set(body["error"]) == {"message", "type", "param", "code"}


def test_error_body_helper_matches_the_method() -> None:
    err = NotFoundError("no such document", param="doc_id")
    assert error_body("no such document", "not_found_error", 404, "doc_id") == err.body()


def test_message_is_the_exception_text() -> None:
    err = OverloadedError("queue full")
    assert str(err) == "queue full"
    assert err.message == "queue full"
    with pytest.raises(RagServeError, match="queue full"):
        raise err


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps], ids=["pickle", "ray-cloudpickle"])
@pytest.mark.parametrize(("cls", "status", "retriable"), ERRORS, ids=lambda v: getattr(v, "__name__", ""))
def test_pickle_round_trip_keeps_every_field(cls: type[RagServeError], status: int, retriable: bool,
                                             dumps: Callable[[object], bytes]) -> None:
    """Ray sends a replica's exception to the ingress with cloudpickle: nothing may be lost."""
    kwargs = {"retry_after_s": 7.5} if "retry_after_s" in inspect.signature(cls).parameters else {}
    err = cls("question is 2001 characters; the limit is 2000", param="question", **kwargs)
    back = pickle.loads(dumps(err))
    assert type(back) is cls
    assert (back.message, str(back), back.param) == (err.message, str(err), "question")
    assert back.status == status and back.retriable is retriable
    assert back.body() == err.body()
    assert back.__dict__ == err.__dict__
    if kwargs:
        assert back.retry_after_s == 7.5


def test_pickle_keeps_a_missing_param() -> None:
    back = pickle.loads(pickle.dumps(DependencyUnavailableError("milvus is down")))
    assert back.param is None
    assert back.message == "milvus is down"


def test_pickle_of_a_subclass_defined_elsewhere() -> None:
    back = pickle.loads(pickle.dumps(_StageError("x", param="p")))
    assert isinstance(back, _StageError) and back.param == "p" and back.status == 418


class _StageError(InvalidRequestError):
    status = 418
