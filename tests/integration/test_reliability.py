"""Under overload it sheds in the one error shape; a client that goes away frees its sequence; a
short soak leaks no stream and no file descriptor.

No timing assertions (the machine is noisy): the overload smoke checks the shape of what the
server answers, the disconnect test polls the engine's own count with a bound far below the
time the abandoned generation would take to finish by itself, and the soak asserts the no-leak
properties that hold on any machine (memory trends are machine-dependent: the 30-minute run of
``ragserve soak`` reports them, docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from deployments.autoscaling import GENERATOR_SEQUENCES
from deployments.bench import overload, runner
from deployments.reliability import soak
from deployments.reliability.command import engine_sequences
from deployments.reliability.mix import Mix

pytestmark = pytest.mark.integration

#: A raw completion prompt the greedy model keeps continuing (counting) rather than ending.
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"


def _engine_sequences() -> float:
    """Sequences the generator's vLLM engine holds (waiting + running), asked through its handle."""
    from ray import serve

    handle = serve.get_deployment_handle("generator", app_name="ragserve")
    return handle.record_autoscaling_stats.remote().result(timeout_s=30)[GENERATOR_SEQUENCES]


def _wait_sequences(want: float, within_s: float) -> float:
    deadline = time.monotonic() + within_s
    while (n := _engine_sequences()) != want and time.monotonic() < deadline:
        time.sleep(0.5)
    return n


def test_client_disconnect_mid_stream_aborts_the_engine_sequence(stack) -> None:
    assert _wait_sequences(0, 60) == 0, "the engine is busy before the test"
    body = {"model": stack.cfg.generator.model, "prompt": COUNTING, "max_tokens": 1000, "temperature": 0,
            "stream": True}
    with httpx.Client(base_url=stack.url, timeout=120) as client:
        r = client.send(client.build_request("POST", "/v1/completions", json=body), stream=True)
        assert r.status_code == 200, r.read()
        # Keep the line iterator referenced: an abandoned one is closed by the garbage collector,
        # and httpcore then closes the connection, i.e. the client would leave early.
        lines = r.iter_lines()
        events: list[str] = []
        for line in lines:
            if line.startswith("data: "):
                events.append(line)
            if len(events) == 4:
                break
        assert "[DONE]" not in events[-1]
        # The sequence is in the engine while its stream is open...
        assert _engine_sequences() == 1
        r.close()  # the client goes away mid-stream
    # ... and leaves it once the client has closed the connection. Left to run, 1000 tokens take
    # this engine well over a minute (about 12-35 tokens/s at batch 1 on the CPUs measured) and
    # the generation only stops at generator.request_timeout_s; 30 s of polling tells the two apart.
    assert _wait_sequences(0, 30) == 0, "the abandoned generation is still in the engine"


def test_overload_smoke_sheds_in_the_one_error_shape(stack) -> None:
    """A burst far above the generator's capacity: some generations are admitted and finish, the
    rest are refused with 503/429, ``Retry-After`` and the one error shape; retrieval still answers."""
    call = overload.make_call("generate", runner.sample_questions(), max_tokens=64)
    budget = stack.cfg.generator.ttft_budget_s
    # 48 arrivals in about 2 s (a fixed burst, no capacity measured: multiple 0): more than the
    # generator's slots (max_ongoing_requests 32) plus Serve's queue for it (max_queued_requests 4),
    # so some must be shed unless 64-token generations finish within the 2 s burst (not on a CPU).
    step = asyncio.run(overload.overload_step(stack.url, "generate", call, multiple=0, rate=24.0, duration_s=2.0,
                                              max_requests=48, budget_s=budget, seed=1))
    print(overload.format_step(step))
    assert step.offered >= 30, step
    assert step.admitted > 0, step
    shed = sum(step.rejected.values())
    assert shed > 0, step
    assert set(step.rejected) <= {"503", "429"}
    assert step.rejected_with_retry_after == shed and step.rejected_in_error_shape == shed, step
    assert not step.failed, step
    retrieve = step.probes["/v1/retrieve"]
    assert retrieve["statuses"].get("200", 0) > 0, retrieve
    assert set(retrieve["statuses"]) == {"200"}, retrieve
    assert set(step.probes["/healthz"]["statuses"]) == {"200"}, step.probes
    assert _wait_sequences(0, 120) == 0


def test_soak_short_leaks_no_stream_and_no_file_descriptor(stack) -> None:
    """Two minutes of the soak's mixed load (retrieve, queries streamed and not, abandoned streams,
    document writes): afterwards the engine holds no sequence and no process of the app holds more
    open files than before (both idle), within the soak's stated bound."""
    mix = Mix.parse("retrieve=3,query=1,stream=2,abandon=1,write=1", max_tokens=16, client_timeout_s=150)
    run = soak.run(stack.url, mix, rate=1.0, questions=runner.sample_questions(), duration_s=90, interval_s=5,
                   warmup_s=20, engine_sequences=engine_sequences)
    rep = soak.report(run, soak.Bounds(), {})
    print(soak.markdown(rep), rep["requests"])
    for kind in mix.weights:
        assert rep["requests"].get(kind, {}).get("ok", 0) > 0, rep["requests"]
    assert run.engine_sequences_after == 0, "leaked streams"
    roles = {p["role"] for p in rep["processes"]}
    assert {"ServeController", "ProxyActor", "vllm:EngineCore", "milvus-lite", "ServeReplica:ragserve:generator",
            "ServeReplica:ragserve:ingress"} <= roles, roles
    grew = [p for p in rep["processes"] if not p["fds_ok"]]
    assert not grew, grew
