"""Retrieval admission (``deployments/ingress/admission.py``) on a hand-driven clock."""

from __future__ import annotations

import pytest

from deployments.errors import OverloadedError
from deployments.ingress import admission
from deployments.ingress.admission import RetrievalAdmission


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_a_lone_retrieval_measures_its_latency_as_the_service_time() -> None:
    clock = Clock()
    a = RetrievalAdmission(budget_s=1.0, clock=clock)
    assert a.estimate_s() == 0.0  # nothing measured yet
    t = a.admit()
    clock.t += 0.08
    a.done(t)
    assert a.service_s == pytest.approx(0.08)
    assert a.in_flight == 0 and a.estimate_s() == pytest.approx(0.08)


def test_overlapping_retrievals_measure_latency_over_mean_parallelism() -> None:
    clock = Clock()
    a = RetrievalAdmission(budget_s=10.0, samples=1, clock=clock)
    first = a.admit()
    clock.t += 0.1
    second = a.admit()  # from here two are in flight
    clock.t += 0.1
    a.done(first)  # 0.2 s with 1 then 2 in flight: mean 1.5, so 0.2 / 1.5
    assert a.service_s == pytest.approx(0.2 / 1.5)
    clock.t += 0.1
    a.done(second)  # 0.2 s with 2 then 1 in flight: mean 1.5 again
    assert a.service_s == pytest.approx(0.2 / 1.5)


def test_past_the_budget_is_a_503_with_retry_after_and_nothing_admitted() -> None:
    clock = Clock()
    a = RetrievalAdmission(budget_s=0.25, clock=clock)
    a.recent.append(0.1)
    tickets = [a.admit(), a.admit()]  # estimates 0.1 and 0.2 s: admitted
    with pytest.raises(OverloadedError) as err:
        a.admit()  # 3 x 0.1 = 0.3 s > 0.25 s
    assert err.value.status == 503 and err.value.retry_after_s == 1
    assert "ingress.retrieve_budget_s" in err.value.message
    assert a.in_flight == 2
    a.done(tickets[0], measured=False)
    a.admit()  # room again


def test_a_lone_retrieval_is_admitted_whatever_the_estimate() -> None:
    a = RetrievalAdmission(budget_s=0.01, clock=Clock())
    a.recent.append(5.0)
    a.admit()
    assert a.in_flight == 1


def test_up_to_the_floor_of_parallelism_is_admitted_whatever_the_estimate() -> None:
    """A slow machine (0.8 s per lone retrieval, as during a rolling update on 2 cores) does not
    refuse a few concurrent callers; past the floor the budget applies again."""
    a = RetrievalAdmission(budget_s=1.0, min_in_flight=3, clock=Clock())
    a.recent.append(0.8)
    for _ in range(3):
        a.admit()  # estimates 0.8, 1.6, 2.4 s: admitted below the floor
    with pytest.raises(OverloadedError):
        a.admit()  # 4 x 0.8 = 3.2 s with 3 in flight
    assert a.in_flight == 3


def test_the_shipped_floor_reaches_the_pipelines_admission() -> None:
    from deployments.config import parse_app_config
    from deployments.ingress.pipeline import Pipeline

    p = Pipeline({}, parse_app_config({"ingress": {"retrieve_budget_s": 0.5, "retrieve_min_in_flight": 2}}))
    assert (p.admission.budget_s, p.admission.min_in_flight) == (0.5, 2)
    assert Pipeline({}, parse_app_config({})).admission.min_in_flight == 4


def test_no_budget_admits_everything() -> None:
    a = RetrievalAdmission(budget_s=None, clock=Clock())
    a.recent.append(5.0)
    for _ in range(100):
        a.admit()
    assert a.in_flight == 100


def test_a_failed_block_frees_its_slot_without_a_sample() -> None:
    clock = Clock()
    a = RetrievalAdmission(budget_s=1.0, clock=clock)
    with pytest.raises(RuntimeError), a.admitted():
        clock.t += 3.0
        raise RuntimeError("milvus down")
    assert a.in_flight == 0 and a.service_s is None
    with a.admitted():
        clock.t += 0.05
    assert a.service_s == pytest.approx(0.05)


def test_one_slow_first_retrieval_does_not_set_the_estimate() -> None:
    clock = Clock()
    a = RetrievalAdmission(budget_s=1.0, clock=clock)
    for latency in (3.0, 0.08, 0.09):  # a fresh replica's first call loads its models
        t = a.admit()
        clock.t += latency
        a.done(t)
    assert a.service_s == pytest.approx(0.09)
    assert [a.admit() for _ in range(5)]  # five in flight: about 0.45 s, within the budget


def _errors(a: RetrievalAdmission, ratios: list[float]) -> None:
    """Replace ``a``'s recorded prediction errors with ``ratios``, recorded now."""
    a.errors.clear()
    a.errors.extend((a.clock(), r) for r in ratios)


def test_the_estimate_is_scaled_by_how_far_off_recent_estimates_were() -> None:
    clock = Clock()
    a = RetrievalAdmission(budget_s=1.0, clock=clock)
    a.recent.append(0.1)
    t = a.admit()  # alone: estimated at 0.1 s, far from the budget: its error does not count
    clock.t += 0.25
    a.done(t)
    assert list(a.errors) == []
    a.recent.extend([0.1] * 15)
    tickets = [a.admit() for _ in range(3)]  # the third estimated at 0.3 s: near the budget
    clock.t += 0.6
    for t in tickets:
        a.done(t)
    assert [r for _, r in a.errors] == [pytest.approx(2.0)]  # it took twice its estimate
    assert a.margin == 1.0  # too few errors yet to scale by
    _errors(a, [1.0] * 95 + [2.5] * 9)  # the 95th percentile is 2.5
    a.recent.clear()
    a.recent.append(0.1)
    assert a.margin == pytest.approx(2.5)
    for _ in range(3):
        a.admit()
    assert a.refusal() is None  # 4 x 0.1 s x 2.5 = 1.0 s: within the budget
    a.admit()
    err = a.refusal()
    assert err is not None and "1250 ms" in err.message  # 5 x 0.1 s x 2.5
    _errors(a, [0.5] * 20)  # estimates too high: the margin never goes below 1
    assert a.margin == 1.0 and a.refusal() is None
    assert a.refusal(wait_s=0.6) is not None  # time already waited elsewhere counts


def test_a_floods_margin_does_not_outlive_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A margin learnt in a flood is forgotten after the window, and meanwhile the retrievals it
    admits near the budget as scaled correct it (with the margin of 1 they would not have counted)."""
    clock = Clock()
    a = RetrievalAdmission(budget_s=1.0, clock=clock)
    a.recent.extend([0.1] * 16)
    _errors(a, [4.0] * 20)  # the flood: latencies 4x their estimates
    assert a.margin == pytest.approx(4.0)
    a.admit()
    a.admit()  # the second estimated at 2 x 0.1 s x 4 = 0.8 s
    assert a.refusal() is not None  # 3 x 0.1 s x 4 = 1.2 s
    clock.t += admission.ERRORS_WINDOW_S + 1
    assert a.margin == 1.0 and not a.errors and a.refusal() is None  # the window passed: plain estimate

    monkeypatch.setattr(admission, "ERRORS_WINDOW_S", 1e9)  # now the correction alone
    b = RetrievalAdmission(budget_s=1.0, clock=clock)
    b.recent.extend([0.1] * 16)
    _errors(b, [4.0] * 20)
    for _ in range(admission.ERRORS):  # calm: one at a time, estimated 0.1 s (0.4 s scaled), taking 0.1 s
        t = b.admit()
        clock.t += 0.1
        b.done(t)
    assert b.margin == 1.0  # the recent errors of 1.0 replaced the flood's


# --------------------------------------------------------------------------- the middleware
def _call(middleware, path: str, method: str = "POST") -> tuple[list[dict], bool, dict]:
    import asyncio

    reached: list[bool] = []
    sent: list[dict] = []
    scope = {"type": "http", "path": path, "method": method, "headers": []}

    async def inner(scope, receive, send) -> None:
        reached.append(True)

    async def receive() -> dict:
        raise AssertionError("the body must not be read")

    async def send(message: dict) -> None:
        sent.append(message)

    middleware.app = inner
    asyncio.run(middleware(scope, receive, send))
    return sent, bool(reached), scope


def test_the_middleware_refuses_a_retrieval_route_before_reading_its_body() -> None:
    import json

    from deployments.ingress.http import SheddingMiddleware

    a = RetrievalAdmission(budget_s=1.0, clock=Clock())
    a.recent.append(0.6)
    route = object()
    mw = SheddingMiddleware(None, a, {"/v1/retrieve": route, "/v1/query": route}, frozenset({"/v1/retrieve"}))
    assert _call(mw, "/v1/retrieve")[1]  # nothing in flight: passed on
    a.admit()  # one in flight: the next is estimated at 1.2 s > 1 s
    sent, reached, scope = _call(mw, "/v1/retrieve")
    assert not reached and scope["route"] is route  # the metrics label the route
    start, body = sent[0], json.loads(sent[1]["body"])
    assert start["status"] == 503 and (b"retry-after", b"1") in start["headers"]
    assert body["error"]["type"] == "overloaded_error" and body["error"]["code"] == 503
    # A route whose whole latency is a retrieval tells the proxy's gate the budget and the floor.
    assert (b"x-ragserve-retrieve-budget", b"1000;1") in start["headers"]
    assert all(k != b"x-ragserve-retrieve-budget" for k, _ in _call(mw, "/v1/query")[0][0]["headers"])
    assert _call(mw, "/healthz", "GET")[1] and _call(mw, "/v1/retrieve", "GET")[1]  # other routes pass


def test_the_app_guards_the_retrieval_routes_with_the_pipelines_admission() -> None:
    from deployments.config import parse_app_config
    from deployments.ingress.api import SHED_PATHS, build_api
    from deployments.ingress.http import IngressMiddleware, SheddingMiddleware
    from deployments.ingress.pipeline import Pipeline

    handles = {name: object() for name in ("preprocess", "encoder", "search", "generator")}  # never called
    pipeline = Pipeline(handles, parse_app_config({}))
    app = build_api(pipeline)
    stack = [m for m in app.user_middleware]
    assert [m.cls for m in stack] == [IngressMiddleware, SheddingMiddleware]  # the outermost first
    shed = stack[1].kwargs
    assert shed["admission"] is pipeline.admission
    assert sorted(shed["routes"]) == sorted(SHED_PATHS)  # every guarded path is a real route
    assert shed["announced"] <= set(SHED_PATHS)
