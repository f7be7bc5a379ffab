"""The proxy's refusal gate, around the real ingress app (FastAPI, keys, limiter) on a fake clock.

No Ray: the ingress's ASGI app is built from its routers with placeholder stage handles (``/v1/models``
and ``/healthz`` call no stage), wrapped in :class:`RefusalGate` as Serve's proxy wraps its own
app, and driven through httpx's ASGI transport.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from deployments import keys, stages
from deployments.config import AppConfig, AuthConfig
from deployments.ingress import gate
from deployments.ingress.access import Access
from deployments.ingress.api import build_api
from deployments.ingress.auth import KeyEntry, KeysFile, Limits, hash_key, new_key
from deployments.ingress.pipeline import Pipeline


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Counted:
    """The wrapped app, counting the requests that reach it."""

    def __init__(self, app) -> None:
        self.app, self.calls = app, 0

    async def __call__(self, scope, receive, send) -> None:
        self.calls += scope["type"] == "http"
        await self.app(scope, receive, send)


@pytest.fixture
def keyed(tmp_path: Path):
    """(gate, inner app, clock, refused tenants, tokens by name) over a keys file of two keys."""
    tokens, entries = {}, []
    for name, limits in (("limited", Limits(requests_per_s=0.5, burst=1)), ("free", None)):
        token, key_id = new_key()
        tokens[name] = token
        entries.append(KeyEntry(id=key_id, hash=hash_key(token), tenant=f"t{name}", scopes=("query",),
                                limits=limits))
    path = tmp_path / "keys.yaml"
    keys.write(path, KeysFile(keys=entries))
    auth = AuthConfig(mode="keys", keys_file=str(path))
    clock, refused = Clock(), []
    cfg = AppConfig(auth=auth)
    # Stage handles are never called by the routes used here; the routers only look them up.
    handles = {s.name: object() for s in stages.STAGES}
    inner = Counted(build_api(Pipeline(handles, cfg, access=Access(auth, clock))))
    return gate.RefusalGate(inner, clock=clock, on_refuse=refused.append), inner, clock, refused, tokens


def get(app, path: str, token: str | None) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await c.get(path, headers={"authorization": f"Bearer {token}"} if token else {})

    return asyncio.run(go())


def test_a_refused_key_is_refused_again_by_the_gate_until_its_hold_ends(keyed) -> None:
    app, inner, clock, refused, tokens = keyed
    assert get(app, "/v1/models", tokens["limited"]).status_code == 200
    first = get(app, "/v1/models", tokens["limited"])  # the ingress's own refusal
    assert first.status_code == 429 and inner.calls == 2
    assert not any(h.startswith("x-ragserve-") for h in first.headers)  # private headers stripped
    clock.t += 1.0
    again = get(app, "/v1/models", tokens["limited"])
    assert again.status_code == 429 and inner.calls == 2  # answered by the gate: the app saw nothing
    assert again.json() == first.json() and again.json()["error"]["type"] == "rate_limit_error"
    assert again.headers["retry-after"] == "1" and again.headers["x-request-id"]
    assert refused == ["tlimited"]
    clock.t += 1.01  # 2 s after the refusal: the bucket (0.5/s) holds a request again
    assert get(app, "/v1/models", tokens["limited"]).status_code == 200 and inner.calls == 3


def test_other_keys_and_routes_without_limits_pass_while_a_key_is_held(keyed) -> None:
    app, inner, _, _, tokens = keyed
    get(app, "/v1/models", tokens["limited"])
    assert get(app, "/v1/models", tokens["limited"]).status_code == 429
    assert get(app, "/v1/models", tokens["free"]).status_code == 200
    assert get(app, "/healthz", tokens["limited"]).status_code == 200  # health checks are never gated
    assert get(app, "/v1/models", None).status_code == 401
    assert inner.calls == 5


async def _refusing_app(scope, receive, send, headers=()) -> None:
    body = json.dumps({"error": {"message": "no", "type": "rate_limit_error", "param": None, "code": 429}}).encode()
    await send({"type": "http.response.start", "status": 429, "headers": [(b"retry-after", b"3"), *headers]})
    await send({"type": "http.response.body", "body": body})


def _gate_over(headers: list[tuple[bytes, bytes]], **kw):
    async def app(scope, receive, send) -> None:
        await _refusing_app(scope, receive, send, headers)

    inner = Counted(app)
    return gate.RefusalGate(inner, clock=Clock(), on_refuse=lambda t: None, **kw), inner


def test_refusals_without_a_hold_are_not_remembered() -> None:
    # Quota and concurrency refusals end when a generation ends, which the gate cannot see.
    app, inner = _gate_over([])
    for _ in range(3):
        assert get(app, "/v1/query", "k").status_code == 429
    assert inner.calls == 3


@pytest.mark.parametrize("hold", [b"soon", b"-5", b"0"])
def test_a_malformed_or_empty_hold_is_ignored(hold: bytes) -> None:
    app, inner = _gate_over([(gate.HOLD_HEADER.encode(), hold)])
    get(app, "/v1/query", "k")
    get(app, "/v1/query", "k")
    assert inner.calls == 2


def test_a_hold_applies_under_its_apps_route_prefix_only() -> None:
    app, inner = _gate_over([(gate.HOLD_HEADER.encode(), b"5000"), (gate.SCOPE_HEADER.encode(), b"/secure")])
    get(app, "/secure/v1/retrieve", "k")
    assert get(app, "/secure/v1/query", "k").status_code == 429 and inner.calls == 1
    get(app, "/v1/retrieve", "k")  # another app (route prefix "/"): not held
    get(app, "/secure/healthz", "k")
    assert inner.calls == 3


def test_memory_is_bounded_oldest_refusal_forgotten_first() -> None:
    app, inner = _gate_over([(gate.HOLD_HEADER.encode(), b"60000")], max_keys=2)
    for token in ("a", "b", "c"):
        get(app, "/v1/query", token)
    assert len(app.holds) == 2
    get(app, "/v1/query", "a")  # forgotten: reaches the app again
    get(app, "/v1/query", "c")  # still held
    assert inner.calls == 4


def test_the_proxy_hook_returns_what_serve_accepts() -> None:
    from ray._common.utils import import_attr
    from ray.serve._private.http_util import validate_http_proxy_callback_return

    from deployments import envs

    hook = next(v.value for v in envs.VARS if v.name == "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH")
    middlewares = validate_http_proxy_callback_return(import_attr(hook)())
    assert [m.cls for m in middlewares] == [gate.RefusalGate]
