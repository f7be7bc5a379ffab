"""The overload table's arithmetic (``deployments/bench/overload.py``) on hand-made outcomes."""

from __future__ import annotations

import json
import math

import pytest

from deployments.bench.overload import Outcome, format_step, is_error_shape, summarize_step

SHAPED_503 = json.dumps({"error": {"message": "full", "type": "overloaded_error", "param": None, "code": 503}})


def test_error_shape_needs_exactly_the_four_fields_and_the_status_as_code() -> None:
    assert is_error_shape(503, SHAPED_503)
    assert not is_error_shape(429, SHAPED_503)  # code must be the status
    assert not is_error_shape(503, json.dumps({"error": {"message": "x", "code": 503}}))
    assert not is_error_shape(503, json.dumps({"detail": "Service Unavailable"}))  # a proxy's own body
    assert not is_error_shape(503, "Service Unavailable")
    assert not is_error_shape(503, "[1, 2]")


def test_step_separates_admitted_shed_and_failed() -> None:
    outcomes = [
        Outcome(0, 1.0, 200, ttft=0.5), Outcome(0, 2.0, 200, ttft=1.5), Outcome(0, 3.0, 200, ttft=2.5),
        Outcome(0, 0.01, 503, retry_after=True, error_shape=True),
        Outcome(0, 0.03, 429, retry_after=True, error_shape=True),
        Outcome(0, 0.02, 503, retry_after=False, error_shape=False),
        Outcome(0, 4.0, 200, ttft=1.0, error="overloaded_error"),  # in-band error after the 200
        Outcome(0, 9.0, 0, error="ReadTimeout"), Outcome(0, 0.1, 500, error_shape=True),
    ]
    s = summarize_step("query", 2, 1.5, outcomes, elapsed_s=3.0, budget_s=2.0)
    assert (s.offered, s.admitted) == (9, 3)
    assert s.rejected == {"503": 2, "429": 1}
    assert s.failed == {"overloaded_error": 1, "ReadTimeout": 1, "500": 1}
    assert (s.rejected_with_retry_after, s.rejected_in_error_shape) == (2, 2)
    assert s.reject_p50_ms == pytest.approx(20)
    assert s.admitted_p50_ms == pytest.approx(2000) and s.admitted_p99_ms == pytest.approx(2980)
    assert s.ttft_p99_ms == pytest.approx(2480)
    assert s.admitted_rps == pytest.approx(1.0)
    assert s.within_budget is False  # generation: TTFT p99 2.48 s > 2 s


def test_generation_budget_is_on_time_to_first_token_retrieval_on_latency() -> None:
    outcomes = [Outcome(0, 5.0, 200, ttft=0.9), Outcome(0, 6.0, 200, ttft=1.0)]
    assert summarize_step("query", 1, 1, outcomes, 1.0, budget_s=1.0).within_budget is True
    assert summarize_step("retrieve", 1, 1, outcomes, 1.0, budget_s=1.0).within_budget is False


def test_step_without_admitted_requests_has_no_verdict_and_formats() -> None:
    s = summarize_step("query", 4, 8.0, [Outcome(0, 0.01, 503, retry_after=True, error_shape=True)], 1.0, 10)
    assert s.within_budget is None and math.isnan(s.admitted_p99_ms)
    line = format_step(s)
    assert "503:1" in line and " - " in line


def test_each_target_is_judged_against_its_own_budget() -> None:
    from deployments.bench.overload import budgets
    from deployments.config import parse_app_config

    b = budgets(parse_app_config({"ingress": {"retrieve_budget_s": 0.5}, "generator": {"ttft_budget_s": 30}}))
    assert b == {"retrieve": 0.5, "retrieve_cached": 0.5, "query": 30.0, "generate": 30.0}
    assert budgets(parse_app_config({"ingress": {"retrieve_budget_s": None}}))["retrieve"] == math.inf


# --------------------------------------------------------------------------- the client, against a real server
def _server_app():
    """An aiohttp app answering as ragserve does: a retrieval (200, or 503 in the one shape with
    Retry-After every third call), a streamed generation with one in-band error, /healthz."""
    from aiohttp import web

    calls = {"n": 0}

    async def retrieve(request: web.Request) -> web.Response:
        body = await request.json()
        calls["n"] += 1
        if calls["n"] % 3 == 0:
            return web.Response(status=503, text=SHAPED_503, headers={"Retry-After": "1"},
                                content_type="application/json")
        return web.json_response({"sources": [], "question": body["question"]})

    async def generate(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"text": "a"}\n\n')
        if body["prompt"].startswith("bad"):
            await resp.write(b'event: error\ndata: {"error": {"type": "engine_error"}}\n\n')
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.add_routes([web.post("/v1/retrieve", retrieve), web.post("/v1/generate", generate),
                    web.get("/healthz", health)])
    return app


def test_the_client_records_status_shape_retry_after_ttft_and_in_band_errors() -> None:
    import asyncio
    import socket

    from aiohttp import web

    from deployments.bench import overload

    async def run() -> tuple[list[Outcome], list[Outcome], dict, list[Outcome]]:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        runner = web.AppRunner(_server_app())
        await runner.setup()
        await web.SockSite(runner, sock).start()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        try:
            retrieve = overload.make_call("retrieve_cached", ["q1", "q2"], 8)
            generate = overload.make_call("generate", ["fine", "bad one"], 8)
            async with overload.session(url) as s:
                r = [await retrieve(s, i) for i in range(6)]
                g = [await generate(s, i) for i in range(2)]
            probe = overload.Probe("/healthz")
            stop = asyncio.Event()
            async with overload.session(url, 2) as s:
                task = asyncio.create_task(probe.run(s, stop, pause_s=0.01))
                await asyncio.sleep(0.2)
                stop.set()
                await task
            async with overload.session("http://127.0.0.1:9") as s:  # nothing listens on the discard port
                dead = [await retrieve(s, 0)]
        finally:
            await runner.cleanup()
        return r, g, probe.summary(), dead

    r, g, probe, dead = asyncio.run(run())
    assert [o.status for o in r] == [200, 200, 503, 200, 200, 503]
    assert all(o.retry_after and o.error_shape for o in r if o.status == 503)
    assert not any(o.retry_after for o in r if o.status == 200)
    assert [(o.status, o.error) for o in g] == [(200, ""), (200, "engine_error")]
    assert all(o.ttft is not None and 0 < o.ttft <= o.latency for o in g)
    assert probe["n"] > 0 and probe["statuses"] == {"200": probe["n"]}
    assert dead[0].status == 0 and dead[0].error  # no HTTP response: the exception's name
