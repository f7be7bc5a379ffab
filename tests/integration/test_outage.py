"""Unavailable dependencies give a fast 503/504, never a hang, and the app recovers; writes
acknowledged before Milvus stops (or is killed) are all there after it restarts.

Runs last (conftest orders it so): it stops and kills the session's Milvus server and kills the
vLLM engine process, all started by this test session (found among this process's own descendants).
"""

from __future__ import annotations

import os
import signal
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


def _restart_milvus(stack, crash: bool) -> None:
    """Stop the session's milvus-lite server (SIGKILL to its process group when ``crash``: no
    chance to write anything more), start a new one on the same data dir and port, and wait until
    retrieval answers again."""
    if crash:
        os.killpg(stack.milvus.proc.pid, signal.SIGKILL)
        stack.milvus.proc.wait(10)
    else:
        stack.milvus.stop()
    stack.milvus = LiteServer(stack.milvus.data_dir, stack.milvus.port).start()
    deadline = time.monotonic() + 60
    while (r := stack.client.post("/v1/retrieve", json={"question": "Quillmark line width"})).status_code != 200:
        assert r.status_code in (503, 504) and time.monotonic() < deadline, r.text
        time.sleep(0.5)


def _doc_texts(stack, coll: str, doc_id: str) -> list[str]:
    r = stack.client.post("/v1/retrieve", json={"question": "gasket torque record", "collection": coll, "top_k": 10,
                                                "filter": {"doc_ids": [doc_id]}})
    assert r.status_code == 200, r.text
    return [s["text"] for s in r.json()["sources"]]


@pytest.mark.parametrize("crash", [False, True], ids=["stopped", "killed"])
def test_acknowledged_writes_survive_a_milvus_restart(stack, crash: bool) -> None:
    """Every write answered 200 (an add, an update, a delete) is what search sees after the
    milvus-lite server stops, or is SIGKILLed, and starts again on its data dir."""
    coll = f"it_durable_{'killed' if crash else 'stopped'}"
    assert stack.client.post("/v1/collections", json={"name": coll}).status_code in (200, 201)
    try:
        docs = [{"id": "kept", "text": "The gasket torque record says 41 newton metres for flange K-7."},
                {"id": "updated", "text": "The gasket torque record says 12 newton metres for flange B-2."},
                {"id": "deleted", "text": "The gasket torque record says 99 newton metres for flange Z-9."}]
        r = stack.client.post("/v1/documents", json={"collection": coll, "documents": docs})
        assert r.status_code == 200, r.text
        update = {"id": "updated", "text": "The gasket torque record now says 15 newton metres for flange B-2."}
        r = stack.client.post("/v1/documents", json={"collection": coll, "documents": [update]})
        assert r.status_code == 200 and r.json()["results"][0]["status"] == "updated", r.text
        assert stack.client.delete("/v1/documents/deleted", params={"collection": coll}).status_code == 200
        _restart_milvus(stack, crash)
        assert _doc_texts(stack, coll, "kept") == [docs[0]["text"]]
        assert _doc_texts(stack, coll, "updated") == [update["text"]]
        assert _doc_texts(stack, coll, "deleted") == []
    finally:
        stack.client.delete(f"/v1/collections/{coll}")


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
