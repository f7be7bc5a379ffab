"""Autoscaling on a real local Ray cluster: the busy stage scales up, the idle ones don't, all drain.

The app runs in a driver subprocess (this file run as a script): the session ``stack`` fixture
already holds a Ray cluster in the pytest process, and one driver process joins one cluster.
The driver starts the app from a serve YAML with fast autoscaling (reports every 0.5 s, 2 s
window, 1 s up / 6 s down delays) against its own milvus-lite server, and writes every
deployment's replica states from ``serve.status()`` to a JSON-lines file twice a second; this
test drives it over HTTP and reads that file.

Load: ``/v1/embeddings`` with 64 texts per call from 8 clients. That is 8 ongoing requests at
the encoder, under its target of 16, so Serve's built-in request signal would NOT scale it: the
encoder reaching 2 replicas shows its replicas' reported batch backlog (policy ``queue``) at
work. Every other stage may scale to 2 as well but must stay at 1; the generator scales on its
vLLM engines' sequences, which stay at 0. After the load every stage must be back at 1.

Cost: ≈2-3 minutes on 2 cores (app start ≈45 s with vLLM, load ≤90 s, drain ≈15 s). The
scale-up decision has 90 s; the added replica's start under load has the start budget (240 s).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.slow]

STAGES = ("ingress", "preprocess", "encoder", "search", "generator")
#: Fast autoscaling for every stage; the overrides below pick each stage's signal and size.
FAST = {"min_replicas": 1, "max_replicas": 2, "upscale_delay_s": 1, "downscale_delay_s": 6,
        "look_back_period_s": 2, "metrics_interval_s": 0.5}
STAGE_OPTIONS: dict[str, dict[str, Any]] = {
    # Logical CPUs sized so every stage fits twice on a 2-CPU node (2 x 0.9 = 1.8).
    "ingress": {"policy": "requests", "target_ongoing_requests": 64, "num_cpus": 0.1},
    "preprocess": {"policy": "requests", "target_ongoing_requests": 8, "num_cpus": 0.1},
    "encoder": {"policy": "queue", "target_ongoing_requests": 16, "num_cpus": 0.2},
    "search": {"policy": "requests", "target_ongoing_requests": 16, "num_cpus": 0.1},
    "generator": {"policy": "generator", "target_ongoing_requests": 24, "num_cpus": 0.4},
}
CLIENTS, TEXTS_PER_CALL = 8, 64
START_TIMEOUT_S, LOAD_TIMEOUT_S, DRAIN_TIMEOUT_S = 240, 90, 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fast_autoscaling_yaml(milvus_uri: str, port: int) -> dict[str, Any]:
    """cluster/serve_config.yaml with every stage on fast autoscaling, private port and Milvus."""
    serve = yaml.safe_load((ROOT / "cluster" / "serve_config.yaml").read_text(encoding="utf-8"))
    serve["http_options"]["port"] = port
    args = serve["applications"][0]["args"]
    args["search"]["milvus"].update(uri=milvus_uri, collection="it_autoscaling", timeout_s=3)
    for stage, opts in STAGE_OPTIONS.items():
        dep = args[stage]["deployment"]
        dep.pop("num_replicas", None)
        dep["autoscaling"] = {**FAST, "policy": opts["policy"],
                              "target_ongoing_requests": opts["target_ongoing_requests"]}
        dep["resources"] = {"num_cpus": opts["num_cpus"]}
        dep["graceful_shutdown_timeout_s"] = 2  # an idle replica stops at once anyway
    return serve


# --------------------------------------------------------------------------- driver (subprocess)
def replica_states() -> dict[str, dict[str, int]]:
    """Deployment -> replica state -> count, from the Serve controller."""
    from ray import serve

    app = serve.status().applications.get("ragserve")
    if app is None:
        return {}
    return {name: {str(getattr(k, "value", k)): n for k, n in d.replica_states.items()}
            for name, d in app.deployments.items()}


def drive(config: Path, states_path: Path) -> int:
    """Start the app, log replica states every 0.5 s until SIGTERM, stop everything we started."""
    from deployments.config import load_config
    from deployments.stack import LocalStack

    port = yaml.safe_load(config.read_text(encoding="utf-8"))["http_options"]["port"]
    stop = threading.Event()
    with LocalStack(load_config(config), port=port):
        signal.signal(signal.SIGTERM, lambda *_: stop.set())  # after ray.init, which replaces it
        with states_path.open("a", encoding="utf-8") as out:
            while not stop.is_set():
                out.write(json.dumps({"t": time.time(), "states": replica_states()}) + "\n")
                out.flush()
                stop.wait(0.5)
    return 0


# --------------------------------------------------------------------------- the test
class App:
    """The driver subprocess and what it reports."""

    def __init__(self, tmp: Path, milvus_uri: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = tmp / "serve_autoscaling.yaml"
        self.config.write_text(yaml.safe_dump(fast_autoscaling_yaml(milvus_uri, self.port)), encoding="utf-8")
        self.states_path, self.log_path = tmp / "replica_states.jsonl", tmp / "driver.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # Its own Ray cluster: never the address of another one (RAY_ADDRESS) that ray.init would join.
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, "--config", str(self.config), "--states", str(self.states_path)],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # the driver stops Serve and its own Ray
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def history(self) -> list[dict[str, Any]]:
        if not self.states_path.exists():
            return []
        lines = self.states_path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def latest(self) -> dict[str, dict[str, int]]:
        h = self.history()
        return h[-1]["states"] if h else {}

    def log_tail(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-4000:] if self.log_path.exists() else ""


def running(states: dict[str, dict[str, int]], stage: str) -> int:
    return states.get(stage, {}).get("RUNNING", 0)


def total(states: dict[str, dict[str, int]], stage: str) -> int:
    """Replicas in any state (starting and stopping included)."""
    return sum(states.get(stage, {}).values())


def at_min(states: dict[str, dict[str, int]]) -> bool:
    return all(running(states, s) == 1 and total(states, s) == 1 for s in STAGES)


def wait_for(what: str, cond: Callable[[], bool], timeout_s: float, app: App) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if app.proc is not None and app.proc.poll() is not None:
            pytest.fail(f"driver exited ({app.proc.returncode}) waiting for {what}:\n{app.log_tail()}")
        if cond():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what}; replicas: {app.latest()}\n{app.log_tail()}")


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    pytest.importorskip("vllm", reason="integration tests need the cpu (or gpu) extra")
    from deployments.search.lite import LiteServer

    milvus = LiteServer(tmp_path / "milvus", free_port()).start()
    a = App(tmp_path, milvus.uri)
    try:
        a.start()
        yield a
    finally:
        a.stop()
        milvus.stop()


def _embed_until(client: httpx.Client, stop: threading.Event, errors: list[str]) -> int:
    texts = [f"autoscaling load text number {i}: the encoder batches these" for i in range(TEXTS_PER_CALL)]
    calls = 0
    while not stop.is_set():
        r = client.post("/v1/embeddings", json={"input": texts})
        if r.status_code != 200:
            errors.append(f"{r.status_code} {r.text[:200]}")
        calls += 1
    return calls


def test_busy_stage_scales_up_idle_stages_do_not_and_all_return_to_min(app: App) -> None:
    wait_for("every stage running", lambda: at_min(app.latest()), START_TIMEOUT_S, app)
    client = httpx.Client(base_url=app.url, timeout=60)
    assert client.post("/v1/embeddings", json={"input": ["warm up"]}).status_code == 200

    stop, errors = threading.Event(), []
    load_start = len(app.history())
    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(_embed_until, client, stop, errors) for _ in range(CLIENTS)]
        try:
            # The scaling decision must come soon; the new replica's start (model load on CPUs
            # the load itself saturates) takes as long as the machine needs: the start budget.
            wait_for("the autoscaler to add an encoder replica", lambda: total(app.latest(), "encoder") >= 2,
                     LOAD_TIMEOUT_S, app)
            wait_for("the second encoder replica running", lambda: running(app.latest(), "encoder") >= 2,
                     START_TIMEOUT_S, app)
            time.sleep(5)  # keep the load on a while: an idle stage that would scale does so by now
        finally:
            stop.set()
        calls = sum(f.result() for f in futures)
    under_load = app.history()[load_start:]
    drain_start = time.monotonic()
    wait_for("every stage back at its minimum", lambda: at_min(app.latest()), DRAIN_TIMEOUT_S, app)
    drained_s = time.monotonic() - drain_start
    client.close()

    assert not errors, errors[:5]
    peak = {s: max(total(h["states"], s) for h in under_load) for s in STAGES}
    print(f"\nautoscaling: {calls} calls of {TEXTS_PER_CALL} texts; peak replicas {peak}; "
          f"all back at min {drained_s:.1f}s after the load")
    assert peak["encoder"] == 2
    assert {s: n for s, n in peak.items() if s != "encoder"} == {s: 1 for s in STAGES if s != "encoder"}


def main() -> int:
    p = argparse.ArgumentParser(description="Autoscaling test driver: start the app, log replica states.")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--states", type=Path, required=True)
    a = p.parse_args()
    return drive(a.config, a.states)


if __name__ == "__main__":  # the driver subprocess; vLLM's engine processes need this guard
    sys.exit(main())
