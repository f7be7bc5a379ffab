"""Unit tests of the pure parts of ``deployments/localcluster/`` (no Ray started).

Port blocks (distinct per node, head-only ports, the free-block search), worker specs, the
``ray start`` command lines (checked against ``ray start``'s own option list), stage placement on
custom resources, and the state file round trip and stop-by-pid of real (non-Ray) processes.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from deployments import localcluster as lc
from deployments import stages
from deployments.config import parse_app_config

ROOT = Path(__file__).resolve().parents[3]


def test_node_port_blocks_are_disjoint_and_head_only_ports_on_the_head() -> None:
    nodes = [lc.node_ports(20000, 0, head=True)] + [lc.node_ports(20000, i) for i in (1, 2, 3)]
    ports = [p for n in nodes for p in n.all()]
    assert len(ports) == len(set(ports))  # several nodes on one machine: no port twice
    head, worker = nodes[0], nodes[1]
    assert (head.gcs, head.client_server, head.dashboard) == (20000, 20007, 20008)
    assert (worker.gcs, worker.client_server, worker.dashboard) == (None, None, None)
    assert worker.min_worker == 20100 + lc.WORKER_PORT_OFFSET and worker.max_worker == 20199
    assert all(20000 + i * lc.PORT_BLOCK <= p < 20000 + (i + 1) * lc.PORT_BLOCK
               for i, n in enumerate(nodes) for p in n.all())


def test_find_port_base_skips_blocks_with_a_busy_port() -> None:
    busy = {20150, 20310}
    base = lc.find_port_base(2, lambda p: p not in busy, search=(20000, 21000))
    assert base == 20400  # 20000 (needs 20000-20199) and 20200/20300 each hit a busy port
    with pytest.raises(RuntimeError, match="no 300 free"):
        lc.find_port_base(3, lambda p: False, search=(20000, 21000))


def test_worker_spec_parse() -> None:
    assert lc.WorkerSpec.parse("cpu") == lc.WorkerSpec(("cpu",), 2)
    spec = lc.WorkerSpec.parse("cpu+generator:3")
    assert spec == lc.WorkerSpec(("cpu", "generator"), 3)
    assert spec.resources() == {"ragserve_cpu_worker": lc.RESOURCE_CAPACITY,
                                "ragserve_generator_worker": lc.RESOURCE_CAPACITY}
    for bad in ("gpu", "cpu:0", "cpu:x", "", "+"):
        with pytest.raises(ValueError):
            lc.WorkerSpec.parse(bad)


def _ray_start_options() -> set[str]:
    """The options ``ray start`` accepts, from Ray's own click command."""
    from ray.scripts.scripts import start

    return {opt for param in start.params for opt in param.opts}


def test_start_commands_use_only_real_ray_start_options() -> None:
    known = _ray_start_options()
    head = lc.start_command("ray", lc.node_ports(20000, 0, head=True), 0, {}, "rs-tmp")
    worker = lc.start_command("ray", lc.node_ports(20000, 1), 2, {"ragserve_cpu_worker": 1000}, "rs-tmp",
                              head_address="127.0.0.1:20000")
    for cmd in (head, worker):
        assert cmd[:3] == ["ray", "start", "--block"]
        opts = [a.split("=", 1)[0] for a in cmd[2:]]
        assert set(opts) <= known, set(opts) - known
        assert len(opts) == len(set(opts))
        assert "--node-ip-address=127.0.0.1" in cmd and "--temp-dir=rs-tmp" in cmd
    assert "--head" in head and "--num-cpus=0" in head and "--port=20000" in head
    assert "--include-dashboard=false" in head and "--dashboard-port=20008" in head
    assert "--head" not in worker and "--address=127.0.0.1:20000" in worker
    assert '--resources={"ragserve_cpu_worker": 1000}' in worker and "--node-manager-port=20101" in worker


def test_placement_pins_every_stage_to_its_worker_type_and_validates() -> None:
    serve = yaml.safe_load((ROOT / "cluster" / "serve_config.yaml").read_text(encoding="utf-8"))
    args = serve["applications"][0]["args"]
    args["search"]["deployment"]["resources"]["resources"] = {"ssd": 1}
    placed = lc.placement_args(args)
    cfg = parse_app_config(placed)
    for stage in stages.DEPLOYMENTS:  # every deployment of the registry, rerank (`reranker`) included
        custom = stage.config(cfg).deployment.resources.resources
        assert custom[lc.NODE_TYPE_RESOURCES[stage.node_type]] == 1, stage.name
    assert cfg.search.deployment.resources.resources["ssd"] == 1  # the config's own resources stay
    assert "resources" not in args["encoder"]["deployment"]["resources"]  # the input is not modified
    assert lc.placement_args({})["generator"]["deployment"]["resources"]["resources"] == {
        "ragserve_generator_worker": 1}


def test_short_temp_dir_keeps_ray_socket_paths_short(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 80) / "run"
    temp = lc.short_temp_dir(deep)
    # Ray puts e.g. <temp>/session_2026-01-01_00-00-00_000000_12345/sockets/plasma_store under it.
    assert len(str(temp)) + len("/session_2026-01-01_00-00-00_000000_1234567/sockets/plasma_store") < 107
    assert temp == lc.short_temp_dir(deep) and temp != lc.short_temp_dir(tmp_path)


def test_state_round_trip_and_stop_by_pid(tmp_path: Path) -> None:
    # Real processes stand in for nodes: a parent (the `ray start --block` role) with a child.
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(2)]
    time.sleep(1.0)
    state = lc.ClusterState(str(tmp_path), "127.0.0.1:20000", "rs-tmp", [
        lc.NodeState(name, [], 0, {"node_manager": 20001}, lc.ProcRef.of(p.pid), "log")
        for name, p in zip(("head", "worker-1"), procs)])
    state.save()
    loaded = lc.ClusterState.load(tmp_path)
    assert loaded == state
    children = [c for n in loaded.nodes for c in n.proc.process().children()]
    assert len(children) == 2
    # A recorded pid whose start time differs is someone else's process: never signalled.
    assert lc.ProcRef(procs[0].pid, state.nodes[0].proc.create_time - 5).process() is None
    report = lc.stop_cluster(loaded, timeout_s=5)
    assert report["nodes"] == ["worker-1", "head"]  # workers before the head
    for p in procs:
        p.wait(5)
    assert not any(c.is_running() and c.status() != "zombie" for c in children)
    assert not (tmp_path / lc.STATE_FILE).exists()
    with pytest.raises(FileNotFoundError):
        lc.ClusterState.load(tmp_path)


def test_cli_registers_the_cluster_group() -> None:
    from deployments.cli import parser

    args = parser().parse_args(["cluster", "up", "--worker", "cpu+generator:3", "--worker", "cpu:2"])
    assert args.workers == [lc.WorkerSpec(("cpu", "generator"), 3), lc.WorkerSpec(("cpu",), 2)]
    assert args.fn is lc.cmd_up and args.run_dir == lc.DEFAULT_RUN_DIR
    assert parser().parse_args(["cluster", "kill-raylet", "worker-2"]).node == "worker-2"
    with pytest.raises(SystemExit):
        parser().parse_args(["cluster", "up", "--worker", "gpu"])  # an unknown worker type is a usage error
