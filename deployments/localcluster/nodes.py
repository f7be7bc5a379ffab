"""Nodes of the local cluster: port blocks, worker specs, the state file, and starting and
stopping ``ray start --block`` processes by pid (see the package docstring)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from deployments import envs, stages

log = logging.getLogger(__name__)

#: Custom resource each worker type advertises; a stage asks for 1 unit of its type's resource.
NODE_TYPE_RESOURCES: dict[str, str] = {"cpu": "ragserve_cpu_worker", "generator": "ragserve_generator_worker"}
#: Which worker type each deployment runs on (the registry's node types: CPU pods vs GPU pods in k8s).
STAGE_NODE_TYPE: dict[str, str] = {s.name: s.node_type for s in stages.DEPLOYMENTS}
#: Units of the type resource a worker advertises: CPUs, not this, limit how many replicas fit.
RESOURCE_CAPACITY = 1000
#: Ports per node: fixed services at the start of the block, Ray worker processes after them.
PORT_BLOCK = 100
WORKER_PORT_OFFSET = 20
#: Below Linux's ephemeral range (32768+), where outgoing connections and ``bind(0)`` take ports.
PORT_SEARCH_RANGE = (20000, 32000)
#: Object store per node: the app passes small messages, and several nodes share one /dev/shm.
OBJECT_STORE_BYTES = 200 * 1024 * 1024
STATE_FILE = "state.json"


# --------------------------------------------------------------------------- pure parts
@dataclass(frozen=True)
class WorkerSpec:
    """One worker node: the worker types it serves and its logical CPUs.

    Written ``TYPE[+TYPE...][:CPUS]`` on the command line, e.g. ``cpu:2`` or ``cpu+generator:3``.
    """

    types: tuple[str, ...]
    num_cpus: int

    @classmethod
    def parse(cls, text: str) -> "WorkerSpec":
        """Parse ``TYPE[+TYPE...][:CPUS]`` (CPUs default to 2).

        Raises:
            ValueError: unknown type, or CPUs that are not a positive integer.
        """
        kinds, _, cpus = text.partition(":")
        types = tuple(t.strip() for t in kinds.split("+") if t.strip())
        unknown = [t for t in types if t not in NODE_TYPE_RESOURCES]
        if not types or unknown:
            raise ValueError(f"worker {text!r}: types must be of {sorted(NODE_TYPE_RESOURCES)}")
        if cpus and (not cpus.isdigit() or int(cpus) < 1):
            raise ValueError(f"worker {text!r}: CPUs must be a positive integer")
        return cls(types, int(cpus) if cpus else 2)

    def resources(self) -> dict[str, int]:
        """The custom resources this node advertises."""
        return {NODE_TYPE_RESOURCES[t]: RESOURCE_CAPACITY for t in self.types}


DEFAULT_WORKERS = (WorkerSpec(("cpu",), 2), WorkerSpec(("generator",), 1))


@dataclass(frozen=True)
class NodePorts:
    """Every port one node listens on; ``gcs``/``client_server``/``dashboard`` on the head only."""

    node_manager: int
    object_manager: int
    metrics_export: int
    dashboard_agent_listen: int
    dashboard_agent_grpc: int
    runtime_env_agent: int
    min_worker: int
    max_worker: int
    gcs: int | None = None
    client_server: int | None = None
    dashboard: int | None = None

    def all(self) -> list[int]:
        """Every port of the node, the worker range included."""
        fixed = [self.node_manager, self.object_manager, self.metrics_export, self.dashboard_agent_listen,
                 self.dashboard_agent_grpc, self.runtime_env_agent, self.gcs, self.client_server, self.dashboard]
        return [p for p in fixed if p is not None] + list(range(self.min_worker, self.max_worker + 1))


def node_ports(base: int, index: int, head: bool = False) -> NodePorts:
    """The ports of node ``index`` (0 is the head) in the block starting at ``base``.

    The head gets a dashboard port even when the dashboard UI is off: Ray 2.60 still runs the
    dashboard process there (usage stats only), and it would otherwise take 8265 or the next free port.
    """
    b = base + index * PORT_BLOCK
    return NodePorts(
        node_manager=b + 1, object_manager=b + 2, metrics_export=b + 3, dashboard_agent_listen=b + 4,
        dashboard_agent_grpc=b + 5, runtime_env_agent=b + 6,
        min_worker=b + WORKER_PORT_OFFSET, max_worker=b + PORT_BLOCK - 1,
        gcs=b if head else None, client_server=b + 7 if head else None,
        dashboard=b + 8 if head else None,
    )


def port_is_free(port: int) -> bool:
    """Whether ``port`` can be bound on 127.0.0.1 right now."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def find_port_base(nodes: int, is_free: Callable[[int], bool] = port_is_free,
                   search: tuple[int, int] = PORT_SEARCH_RANGE) -> int:
    """The lowest block-aligned base in ``search`` where all ``nodes`` blocks are free.

    Raises:
        RuntimeError: no such base.
    """
    span = nodes * PORT_BLOCK
    for base in range(search[0], search[1] - span + 1, PORT_BLOCK):
        if all(is_free(p) for p in range(base, base + span)):
            return base
    raise RuntimeError(f"no {span} free consecutive ports in {search[0]}-{search[1]} on 127.0.0.1")


def start_command(ray_exe: str, ports: NodePorts, num_cpus: int, resources: dict[str, int], temp_dir: str,
                  head_address: str | None = None, dashboard: bool = False) -> list[str]:
    """The ``ray start --block`` command line of one node (the head when ``head_address`` is None)."""
    cmd = [ray_exe, "start", "--block", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
           "--num-gpus=0", f"--resources={json.dumps(resources, sort_keys=True)}",
           f"--temp-dir={temp_dir}", f"--object-store-memory={OBJECT_STORE_BYTES}", "--disable-usage-stats",
           f"--node-manager-port={ports.node_manager}", f"--object-manager-port={ports.object_manager}",
           f"--metrics-export-port={ports.metrics_export}",
           f"--dashboard-agent-listen-port={ports.dashboard_agent_listen}",
           f"--dashboard-agent-grpc-port={ports.dashboard_agent_grpc}",
           f"--runtime-env-agent-port={ports.runtime_env_agent}",
           f"--min-worker-port={ports.min_worker}", f"--max-worker-port={ports.max_worker}"]
    if head_address is not None:
        return [*cmd, f"--address={head_address}"]
    return [*cmd, "--head", f"--port={ports.gcs}", f"--ray-client-server-port={ports.client_server}",
            f"--include-dashboard={str(dashboard).lower()}", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={ports.dashboard}"]


def placement_args(args: dict[str, Any]) -> dict[str, Any]:
    """``args`` (an AppConfig mapping) with each stage pinned to its worker type's custom resource.

    A stage that already names custom resources keeps them; the type resource is added next to them.
    """
    out = json.loads(json.dumps(args))  # deep copy of plain YAML data
    for stage in stages.DEPLOYMENTS:  # keyed by config slice: the rerank stage's is `reranker`
        res = out.setdefault(stage.config_field, {}).setdefault("deployment", {}).setdefault("resources", {})
        res.setdefault("resources", {}).setdefault(NODE_TYPE_RESOURCES[stage.node_type], 1)
    return out


def short_temp_dir(run_dir: Path) -> Path:
    """Ray's temp dir for a run dir: short, because Ray's unix socket paths live under it (≤107 bytes)."""
    return Path(tempfile.gettempdir()) / f"rs-{zlib.crc32(str(run_dir.resolve()).encode()):08x}"


# --------------------------------------------------------------------------- state
@dataclass
class ProcRef:
    """A process this module started, identified by pid *and* start time (pids get reused)."""

    pid: int
    create_time: float

    @classmethod
    def of(cls, pid: int) -> "ProcRef":
        """The reference of the running process ``pid``."""
        return cls(pid, psutil.Process(pid).create_time())

    def process(self) -> psutil.Process | None:
        """The live process, or None if it exited (or the pid now belongs to another process)."""
        try:
            p = psutil.Process(self.pid)
            if abs(p.create_time() - self.create_time) < 0.01 and p.status() != psutil.STATUS_ZOMBIE:
                return p
        except psutil.Error:
            pass
        return None


@dataclass
class NodeState:
    """One node: its ``ray start --block`` process and how it was started."""

    name: str
    types: list[str]
    num_cpus: int
    ports: dict[str, int | None]
    proc: ProcRef
    log: str


@dataclass
class ClusterState:
    """Everything ``down``/``status`` need, written to ``<run dir>/state.json``."""

    run_dir: str
    address: str
    temp_dir: str
    nodes: list[NodeState]
    http_url: str | None = None
    app_name: str | None = None
    milvus: ProcRef | None = None
    milvus_uri: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def save(self) -> Path:
        """Write the state file (atomically); returns its path."""
        path = Path(self.run_dir) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")
        tmp.replace(path)  # atomic: a concurrent `down` never reads half a file
        return path

    @classmethod
    def load(cls, run_dir: str | Path) -> "ClusterState":
        """Read the state of the cluster started in ``run_dir``.

        Raises:
            FileNotFoundError: no cluster was started there.
        """
        data = json.loads((Path(run_dir) / STATE_FILE).read_text(encoding="utf-8"))
        data["nodes"] = [NodeState(**{**n, "proc": ProcRef(**n["proc"])}) for n in data["nodes"]]
        data["milvus"] = ProcRef(**data["milvus"]) if data.get("milvus") else None
        return cls(**data)

    def node(self, name: str) -> NodeState:
        """The node called ``name`` (``head``, ``worker-1``, ...)."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node {name!r}; nodes: {[n.name for n in self.nodes]}")


# --------------------------------------------------------------------------- processes
def ray_executable() -> str:
    """The ``ray`` CLI of this Python environment."""
    return shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray") or "ray"


def _node_env() -> dict[str, str]:
    env = dict(os.environ) | envs.node_env()
    # Ray drains a node for up to 30 s on SIGTERM (for rolling upgrades); `down` stops the whole
    # cluster, where there is nothing to drain to.
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    env.pop("RAY_ADDRESS", None)  # the node's --address must win
    return env


def _auth_env() -> None:
    # Ray 2.60 turns token auth on for a new head by default but not for a joining node or driver,
    # which then fail with InvalidAuthToken: say it explicitly (the token is ~/.ray/auth_token).
    os.environ.setdefault("RAY_AUTH_MODE", "token")


def _launch(cmd: list[str], log_path: Path) -> ProcRef:
    with open(log_path, "ab") as out:
        # Own session: the node outlives `ragserve cluster up`, and Ctrl-C there does not reach it.
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=_node_env())
    return ProcRef.of(proc.pid)


def _wait_listening(port: int, ref: ProcRef, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ref.process() is None:
            raise RuntimeError(f"ray start exited; see {log_path}")
        if not port_is_free(port):
            return
        time.sleep(0.2)
    raise RuntimeError(f"node did not listen on port {port} within {timeout_s:.0f}s; see {log_path}")


def start_nodes(run_dir: Path, workers: Sequence[WorkerSpec], base_port: int | None = None,
                dashboard: bool = False, timeout_s: float = 120.0) -> ClusterState:
    """Start the head (num-cpus 0) and ``workers``; returns once every raylet listens.

    The state file is written after each node, so ``down`` can clean up after a failed start.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / STATE_FILE).exists():
        raise RuntimeError(f"{run_dir / STATE_FILE} exists: run `ragserve cluster down` first")
    base = base_port if base_port is not None else find_port_base(1 + len(workers))
    temp_dir = short_temp_dir(run_dir)
    head_ports = node_ports(base, 0, head=True)
    state = ClusterState(str(run_dir.resolve()), f"127.0.0.1:{head_ports.gcs}", str(temp_dir), [])
    specs: list[tuple[str, list[str], int, NodePorts]] = [("head", [], 0, head_ports)]
    specs += [(f"worker-{i}", list(w.types), w.num_cpus, node_ports(base, i)) for i, w in enumerate(workers, 1)]
    t0 = time.perf_counter()
    _auth_env()
    try:
        _start_each(state, specs, run_dir, dashboard, timeout_s)
    except BaseException:
        stop_cluster(state)  # a half-started cluster is stopped, not left behind
        raise
    state.timings["nodes_start_s"] = time.perf_counter() - t0
    state.save()
    return state


def _start_each(state: ClusterState, specs: list[tuple[str, list[str], int, NodePorts]], run_dir: Path,
                dashboard: bool, timeout_s: float) -> None:
    for name, types, cpus, ports in specs:
        busy = [p for p in ports.all() if not port_is_free(p)]
        if busy:
            raise RuntimeError(f"{name}: ports in use on 127.0.0.1: {busy[:5]}")
        resources = WorkerSpec(tuple(types), cpus).resources() if types else {}
        cmd = start_command(ray_executable(), ports, cpus, resources, state.temp_dir,
                            None if name == "head" else state.address, dashboard)
        log_path = run_dir / f"{name}.log"
        ref = _launch(cmd, log_path)
        state.nodes.append(NodeState(name, types, cpus, asdict(ports), ref, str(log_path)))
        state.save()
        # One node at a time: the head must serve GCS before a worker joins, and a failure names its node.
        _wait_listening(ports.gcs if name == "head" else ports.node_manager, ref, log_path, timeout_s)


def find_raylet(node: NodeState) -> psutil.Process | None:
    """The raylet process of ``node`` (a child of its ``ray start --block`` process)."""
    parent = node.proc.process()
    if parent is None:
        return None
    for child in parent.children(recursive=True):
        try:
            if child.name() == "raylet":
                return child
        except psutil.Error:
            continue
    return None


def kill_raylet(node: NodeState, sig: int = signal.SIGKILL) -> int:
    """Send ``sig`` to the raylet of ``node`` (a node failure); returns the raylet's pid.

    Raises:
        RuntimeError: the node has no running raylet.
    """
    raylet = find_raylet(node)
    if raylet is None:
        raise RuntimeError(f"{node.name}: no running raylet")
    raylet.send_signal(sig)
    return raylet.pid


def _terminate(procs: list[psutil.Process], timeout_s: float) -> list[int]:
    """SIGTERM, wait, then SIGKILL what is left; returns the pids that needed SIGKILL."""
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
    return [p.pid for p in alive]


def stop_cluster(state: ClusterState, timeout_s: float = 30.0) -> dict[str, Any]:
    """Stop every node and the milvus-lite server this cluster started, by their recorded pids.

    Each node's ``ray start --block`` process stops its own Ray processes on SIGTERM. Workers go
    first and the head last (a worker's raylet shuts down cleanly only while GCS still answers);
    whatever of a node's process tree (collected before the first signal) outlives ``timeout_s``
    is killed. Returns what was stopped, for the report.
    """
    stopped: list[str] = []
    killed: list[int] = []
    for group in ([n for n in state.nodes if n.name != "head"], [n for n in state.nodes if n.name == "head"]):
        roots = {n.name: n.proc.process() for n in group}
        tree: list[psutil.Process] = []
        for root in (r for r in roots.values() if r is not None):
            try:
                tree += root.children(recursive=True)
            except psutil.Error:
                pass
        killed += _terminate([r for r in roots.values() if r is not None], timeout_s)
        killed += _terminate([p for p in tree if p.is_running()], 10.0)
        stopped += [name for name, r in roots.items() if r is not None]
    milvus = state.milvus.process() if state.milvus else None
    if milvus is not None:
        # LiteServer starts milvus-lite in its own session; the server may have children.
        killed += _terminate([milvus, *milvus.children(recursive=True)], 10.0)
    (Path(state.run_dir) / STATE_FILE).unlink(missing_ok=True)
    return {"nodes": stopped, "milvus": milvus is not None, "killed": killed}


