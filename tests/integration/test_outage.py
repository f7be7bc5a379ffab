"""Unavailable dependencies give a fast 503/504, never a hang, and the app recovers.

Runs last (conftest orders it so): it stops the session's Milvus server and kills the vLLM engine
process, both started by this test session (found among this process's own descendants).
"""

from __future__ import annotations

import os
import time

import psutil
import pytest

from deployments.search.lite import LiteServer

pytestmark = pytest.mark.integration


def _wait_ready(stack, within_s: float) -> dict:
    deadline = time.monotonic() + within_s
    body: dict = {}
    while time.monotonic() < deadline:
        r = stack.client.get("/readyz", timeout=15)
        body = r.json()
        if r.status_code == 200:
            return body
        time.sleep(2)
    raise AssertionError(f"not ready after {within_s}s: {body}")


def test_milvus_down_is_503_then_recovers(stack) -> None:
    bound = stack.cfg.search.milvus.timeout_s * 2 + 5  # generous: "fast", not a benchmark
    stack.milvus.stop()
    try:
        start = time.monotonic()
        r = stack.client.post("/v1/retrieve", json={"question": "Quillmark line width"})
        elapsed = time.monotonic() - start
        assert r.status_code in (503, 504), r.text
        assert "milvus" in r.json()["error"]["message"].lower()
        assert elapsed < bound, elapsed
        r = stack.client.post("/v1/query", json={"question": "Quillmark line width"})
        assert r.status_code in (503, 504)
        ready = stack.client.get("/readyz")
        assert ready.status_code == 503 and not ready.json()["stages"]["search"]["ok"]
    finally:
        stack.milvus = LiteServer(stack.milvus.data_dir, stack.milvus.port).start()
    # pymilvus reconnects by itself once the server is back (within about a second here).
    deadline = time.monotonic() + 30
    while (r := stack.client.post("/v1/retrieve", json={"question": "Quillmark line width"})).status_code != 200:
        assert r.status_code in (503, 504) and time.monotonic() < deadline, r.text
        time.sleep(0.5)
    assert r.json()["sources"][0]["source"].endswith("quillmark_cli.md")


def _engine_processes() -> list[psutil.Process]:
    me = psutil.Process(os.getpid())
    return [p for p in me.children(recursive=True) if "EngineCore" in " ".join(_names(p))]


def _names(p: psutil.Process) -> list[str]:
    try:
        return [p.name(), *p.cmdline()]
    except psutil.Error:
        return []


def test_generator_engine_death_is_503_and_replica_is_replaced(stack) -> None:
    engines = _engine_processes()
    assert len(engines) == 1, engines
    engines[0].kill()
    engines[0].wait(10)
    start = time.monotonic()
    r = stack.client.post("/v1/generate", json={"prompt": "Say hello.", "max_tokens": 8})
    elapsed = time.monotonic() - start
    assert r.status_code == 503, r.text
    assert elapsed < 30, elapsed
    # Serve's health check sees the dead engine and starts a new replica.
    _wait_ready(stack, within_s=240)
    r = stack.client.post("/v1/generate", json={"prompt": "Say hello.", "max_tokens": 4})
    assert r.status_code == 200, r.text
