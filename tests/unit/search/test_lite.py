"""Unit tests of ``deployments.search.lite``: which URIs mean a local milvus-lite server.

Covers: ``local_endpoint`` for loopback URIs (explicit and default port, IPv6, the schemes
Milvus accepts) versus remote hosts and ``.db`` file paths, and ``is_listening`` against a
socket this test binds on 127.0.0.1 (no server process is started; loopback only).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from deployments.search.lite import is_listening, local_endpoint


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("http://127.0.0.1:19530", ("127.0.0.1", 19530)),
        ("http://127.0.0.1:19777", ("127.0.0.1", 19777)),
        ("http://localhost", ("localhost", 19530)),
        ("tcp://localhost:2000", ("localhost", 2000)),
        ("grpc://[::1]:19531", ("::1", 19531)),
    ],
)
def test_local_endpoint_loopback(uri: str, expected: tuple[str, int]) -> None:
    assert local_endpoint(uri) == expected


@pytest.mark.parametrize(
    "uri",
    [
        "http://milvus.example.com:19530",
        "http://10.0.0.5:19530",
        "https://in03-abc.cloud.zilliz.com",
        "./data/milvus.db",
        "milvus.db",
        "/var/lib/ragserve/milvus.db",
        "ftp://127.0.0.1:19530",
    ],
)
def test_local_endpoint_not_local(uri: str) -> None:
    assert local_endpoint(uri) is None


@pytest.fixture
def bound() -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    yield s
    s.close()


def test_is_listening_true_for_listening_socket(bound: socket.socket) -> None:
    bound.listen(1)
    assert is_listening("127.0.0.1", bound.getsockname()[1])


def test_is_listening_false_for_closed_port(bound: socket.socket) -> None:
    # Bound but not listening: the port is ours and connections to it are refused.
    assert not is_listening("127.0.0.1", bound.getsockname()[1], timeout=0.5)


def test_is_listening_false_after_close() -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    port = s.getsockname()[1]
    assert is_listening("127.0.0.1", port)
    s.close()
    assert not is_listening("127.0.0.1", port)
