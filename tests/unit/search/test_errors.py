"""Unit tests of ``deployments.search.store.milvus_errors``: pymilvus failures as typed errors."""

from __future__ import annotations

import pytest

pymilvus_exceptions = pytest.importorskip("pymilvus.exceptions")

from deployments.errors import (  # noqa: E402
    DependencyTimeoutError, DependencyUnavailableError, NotFoundError, RagServeError,
)
from deployments.search.store import milvus_errors  # noqa: E402

grpc = pytest.importorskip("grpc")


class _RpcError(grpc.RpcError):
    """What pymilvus re-raises as it is for some gRPC failures (a hybrid search past its deadline)."""

    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code.name)
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


@pytest.mark.parametrize(("raised", "expected", "status"), [
    (pymilvus_exceptions.MilvusException(message="server unavailable"), DependencyUnavailableError, 503),
    (pymilvus_exceptions.MilvusException(message="deadline exceeded"), DependencyTimeoutError, 504),
    (pymilvus_exceptions.MilvusException(message="collection not found[collection=x]"), NotFoundError, 404),
    (pymilvus_exceptions.DataNotMatchException(message="field dense: wrong dim"), RagServeError, 500),
    (pymilvus_exceptions.DataTypeNotMatchException(message="acl: not a list"), RagServeError, 500),
    (ConnectionRefusedError("refused"), DependencyUnavailableError, 503),
    (_RpcError(grpc.StatusCode.DEADLINE_EXCEEDED), DependencyTimeoutError, 504),
    (_RpcError(grpc.StatusCode.UNAVAILABLE), DependencyUnavailableError, 503),
])
def test_failures_map_to_typed_errors(raised: Exception, expected: type, status: int) -> None:
    with pytest.raises(expected) as exc, milvus_errors("insert", timeout_s=10):
        raise raised
    assert type(exc.value) is expected and exc.value.status == status
    assert exc.value.retriable == (status in (503, 504))
