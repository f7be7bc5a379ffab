"""The proxy's refusal gate, around the real ingress app (FastAPI, keys, limiter) on a fake clock.

No Ray: the ingress's ASGI app is built from its routers with placeholder stage handles (``/v1/models``
and ``/healthz`` call no stage), wrapped in :class:`RefusalGate` as Serve's proxy wraps its own
app, and driven through httpx's ASGI transport.
"""

from __future__ import annotations

import asyncio
import json
import time
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


# --------------------------------------------------------------------------- retrieval shedding
class Retrieving:
    """An app answering every request 200 after ``latency`` seconds of the fake clock, its
    responses announcing ``budget`` (the ingress's ``gate.BUDGET_HEADER``); ``fail`` raises instead."""

    def __init__(self, clock: Clock, budget: bytes = b"1000;1", latency: float = 0.0) -> None:
        self.clock, self.budget, self.latency, self.calls, self.fail = clock, budget, latency, 0, False

    async def __call__(self, scope, receive, send) -> None:
        self.calls += 1
        self.clock.t += self.latency
        if self.fail:
            raise RuntimeError("the ingress went away")
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (gate.BUDGET_HEADER.encode(), self.budget)]})
        await send({"type": "http.response.body", "body": b"{}"})


def post(app, path: str) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await c.post(path, json={"question": "q"})

    return asyncio.run(go())


def test_the_gate_learns_the_budget_and_sheds_retrievals_past_it_in_the_one_shape() -> None:
    clock, shed = Clock(), []
    inner = Retrieving(clock, latency=0.6)
    app = gate.RefusalGate(inner, clock=clock, on_shed=shed.append)
    first = post(app, "/v1/retrieve")  # no budget known yet: passed on, and it is learnt from the response
    assert first.status_code == 200 and gate.BUDGET_HEADER not in first.headers
    admission = app.admissions["/v1/retrieve"]
    assert (admission.budget_s, admission.min_in_flight, admission.service_s) == (1.0, 1, None)
    assert post(app, "/v1/retrieve").status_code == 200 and admission.in_flight == 0
    assert admission.service_s == pytest.approx(0.6)  # measured by the gate: one alone took 0.6 s
    admission.admit()  # one in flight: the next is estimated at 1.2 s > 1 s
    refused = post(app, "/v1/retrieve")
    assert refused.status_code == 503 and inner.calls == 2 and shed == ["/v1/retrieve"]
    err = refused.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == 503
    assert err["type"] == "overloaded_error" and "budget" in err["message"]
    assert refused.headers["retry-after"] == "1" and refused.headers["x-request-id"]
    assert get(app, "/v1/retrieve", None).status_code == 200  # only POST is a retrieval
    assert post(app, "/v1/query").status_code == 200  # a path with no budget announced passes


def test_a_retrieval_that_failed_ends_its_ticket_without_a_sample() -> None:
    clock = Clock()
    inner = Retrieving(clock, latency=0.01)
    app = gate.RefusalGate(inner, clock=clock, on_shed=lambda p: None)
    post(app, "/v1/retrieve")  # learnt
    post(app, "/v1/retrieve")  # measured
    admission = app.admissions["/v1/retrieve"]
    inner.fail, inner.latency = True, 5.0
    assert post(app, "/v1/retrieve").status_code == 503  # answered by the gate: see below
    assert admission.in_flight == 0 and list(admission.recent) == [pytest.approx(0.01)]


def test_a_budget_turned_off_or_changed_by_the_ingress_is_taken_up() -> None:
    clock = Clock()
    inner = Retrieving(clock)
    app = gate.RefusalGate(inner, clock=clock)
    post(app, "/v1/retrieve")
    inner.budget = b"250;4"
    post(app, "/v1/retrieve")
    assert (app.admissions["/v1/retrieve"].budget_s, app.admissions["/v1/retrieve"].min_in_flight) == (0.25, 4)
    inner.budget = b"off"
    assert post(app, "/v1/retrieve").status_code == 200 and app.admissions == {}
    inner.budget = b"soon"  # malformed: ignored, the ingress's own admission still holds
    post(app, "/v1/retrieve")
    assert app.admissions == {}


def test_time_waited_before_the_gate_counts_against_the_budget() -> None:
    clock, waited = Clock(), [0.0]
    app = gate.RefusalGate(Retrieving(clock, latency=0.1), clock=clock, lag=lambda: waited[0])
    post(app, "/v1/retrieve")
    post(app, "/v1/retrieve")
    app.admissions["/v1/retrieve"].admit()  # one in flight: estimated at 0.2 s
    assert post(app, "/v1/retrieve").status_code == 200
    waited[0] = 0.85  # the proxy's loop runs 0.85 s late: 1.05 s in all
    assert post(app, "/v1/retrieve").status_code == 503


def test_the_loop_lag_measures_a_blocked_loop() -> None:
    lag = gate.LoopLag()

    async def go() -> float:
        lag()
        await asyncio.sleep(0.01)  # the sampler is sleeping now
        time.sleep(0.3)  # the loop is blocked past its wake-up (due 0.04 s from now)
        await asyncio.sleep(0.01)  # the sampler wakes first, 0.26 s late (or later on a busy machine)
        return lag()

    assert asyncio.run(go()) >= 0.2  # a lower bound only: a slower machine makes it larger


# --------------------------------------------------------------------------- Serve's own errors
def _gate_around(app):
    return gate.RefusalGate(app, clock=Clock(), lag=lambda: 0.0)


def test_a_plain_text_error_of_serves_proxy_is_put_in_the_one_shape() -> None:
    async def backpressure(scope, receive, send) -> None:  # what Serve's proxy writes by itself
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"retry-after", b"2")]})
        await send({"type": "http.response.body", "body": b"Request dropped due to ", "more_body": True})
        await send({"type": "http.response.body", "body": b"backpressure"})

    r = post(_gate_around(backpressure), "/v1/query")
    assert r.status_code == 503 and r.headers["retry-after"] == "2"
    assert r.json() == {"error": {"message": "Request dropped due to backpressure", "type": "service_unavailable",
                                  "param": None, "code": 503}}


def test_a_json_error_of_the_app_passes_unchanged() -> None:
    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 400, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"error": {"message": "mine"}}'})

    assert post(_gate_around(app), "/v1/query").json() == {"error": {"message": "mine"}}


@pytest.mark.parametrize("how", ["returns", "raises"])
def test_a_request_left_unanswered_gets_a_503_to_retry_not_a_plain_500(how: str) -> None:
    async def died(scope, receive, send) -> None:  # the replica died: Serve yields no message
        if how == "raises":
            raise RuntimeError("replica gone")

    r = post(_gate_around(died), "/v1/retrieve")
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    err = r.json()["error"]
    assert err["type"] == "service_unavailable" and err["code"] == 503 and "retry" in err["message"]


def test_an_error_after_the_response_started_is_not_hidden() -> None:
    async def cut(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("cut mid-stream")

    with pytest.raises(RuntimeError):
        post(_gate_around(cut), "/v1/query")
