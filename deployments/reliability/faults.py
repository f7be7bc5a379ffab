"""The faults of the chaos matrix on a local multi-node cluster (``ragserve cluster``): what each
kills, how its victim is found, and when the app counts as whole again.

* a replica of each deployed stage (ingress, preprocess, encoder, search, rerank when enabled,
  generator): the replica's actor is found with Ray's state API (``list_actors``: class
  ``ServeReplica:<app>:<deployment>``, its pid) and SIGKILLed;
* the Serve controller (``ServeController``) and the HTTP proxy (``ProxyActor``), the same way;
* the milvus-lite server: SIGKILL to its process group, and after ``milvus_down_s`` a new server
  on the same data directory and port (read from the killed process's command line);
* a worker node: SIGKILL to the raylet of the last CPU-only worker (``ray start --block`` then
  takes the whole node down, as a lost machine).

Whole again means: ``/readyz`` answers 200, the cluster snapshot is settled (every deployment
HEALTHY with its target number of RUNNING replicas on live nodes, Ray's view of the nodes agreeing
with the processes), and the victim is really gone (no RUNNING replica is the killed actor, the
restarted controller or proxy is a new process). Every pid killed is one this cluster's processes
own, found on this machine: nothing else is touched.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import psutil

from deployments import stages
from deployments.config import AppConfig
from deployments.localcluster.app import snapshot
from deployments.localcluster.nodes import ClusterState, ProcRef, kill_raylet
from deployments.search.lite import LiteServer

FaultKind = Literal["replica", "controller", "proxy", "milvus", "node"]
#: Actor classes of Serve's own actors, as Ray's state API names them.
ACTOR_CLASSES = {"controller": "ServeController", "proxy": "ProxyActor"}


@dataclass(frozen=True)
class Fault:
    """One row of the matrix: ``name`` is what the table says, ``target`` the deployment of a replica fault."""

    name: str
    kind: FaultKind
    target: str = ""

    @property
    def holds_connections(self) -> bool:
        """Whether the victim holds clients' connections (the proxy, an ingress replica, a node
        that runs one): requests in flight there are lost with it, before the app can answer."""
        return self.kind in ("proxy", "node") or self.target == stages.INGRESS.name


def matrix(cfg: AppConfig) -> list[Fault]:
    """Every fault for ``cfg``'s deployed stages, in the order they run (the node last: it leaves
    the cluster a node short)."""
    order = [stages.INGRESS, *stages.STAGES]  # the ingress first, then request order
    replicas = [Fault(s.name, "replica", s.name) for s in order if s.enabled(cfg)]
    return [*replicas, Fault("controller", "controller"), Fault("proxy", "proxy"), Fault("milvus", "milvus"),
            Fault("worker-node", "node")]


def select(all_faults: list[Fault], names: str | None) -> list[Fault]:
    """The faults named in ``names`` (comma-separated), in matrix order; all when None.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if not names:
        return all_faults
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in {f.name for f in all_faults}]
    if unknown:
        raise ValueError(f"unknown faults {unknown}; known: {[f.name for f in all_faults]}")
    return [f for f in all_faults if f.name in wanted]


@dataclass
class Killed:
    """What a fault killed: a readable description, the pid, the actor (if any), when."""

    what: str
    pid: int
    at: float
    actor_id: str | None = None
    node: str | None = None  # the node a node fault killed


def alive_actors(class_name: str, address: str) -> list[Any]:
    """ALIVE actors of ``class_name`` from Ray's state API of the cluster at ``address`` (its
    GCS address; the cluster runs a dashboard). The address is given, not discovered: Ray refuses
    to guess when another Ray runs on the machine (a server beside the drill, a test stack)."""
    from ray.util.state import list_actors

    return list(list_actors(address=address, filters=[("class_name", "=", class_name), ("state", "=", "ALIVE")],
                            timeout=30))


class Injector:
    """Kills and checks on one local cluster, from a driver connected to it.

    Args:
        state: the cluster (its nodes' and Milvus's pids, its URL).
        milvus_down_s: how long the Milvus server stays down before it is started again.
        snapshot_timeout_s: the longest the Serve controller may take to answer a status call.
    """

    def __init__(self, state: ClusterState, milvus_down_s: float = 5.0, snapshot_timeout_s: float = 10.0) -> None:
        self.state, self.milvus_down_s, self.snapshot_timeout_s = state, milvus_down_s, snapshot_timeout_s

    def actor_class(self, fault: Fault) -> str:
        if fault.kind == "replica":
            return f"ServeReplica:{self.state.app_name or 'ragserve'}:{fault.target}"
        return ACTOR_CLASSES[fault.kind]

    def kill(self, fault: Fault) -> Killed:
        """SIGKILL the fault's victim now (Milvus: and start it again after ``milvus_down_s``).

        Raises:
            RuntimeError: nothing to kill (no such actor alive, no Milvus server of this cluster,
                no CPU-only worker node).
        """
        if fault.kind == "milvus":
            return self._milvus()
        if fault.kind == "node":
            return self._node()
        actors = sorted(alive_actors(self.actor_class(fault), self.state.address), key=lambda a: a.pid or 0)
        if not actors:
            raise RuntimeError(f"no ALIVE actor of class {self.actor_class(fault)}")
        victim = actors[0]
        at = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)
        return Killed(f"{self.actor_class(fault)} pid {victim.pid} ({len(actors)} alive)", victim.pid, at,
                      victim.actor_id)

    def _milvus(self) -> Killed:
        proc = self.state.milvus.process() if self.state.milvus else None
        if proc is None:
            raise RuntimeError("no milvus-lite server of this cluster is running (a remote Milvus is not killed)")
        args = proc.cmdline()
        data_dir, port = args[args.index("--data-dir") + 1], int(args[args.index("--port") + 1])
        at = time.monotonic()
        os.killpg(proc.pid, signal.SIGKILL)  # LiteServer starts it in its own session: the group is the server
        psutil.wait_procs([proc], timeout=10)
        time.sleep(self.milvus_down_s)
        server = LiteServer(data_dir, port).start()
        assert server.proc is not None
        self.state.milvus = ProcRef.of(server.proc.pid)
        self.state.save()  # `ragserve cluster down` stops the new server
        return Killed(f"milvus-lite pid {proc.pid}, down {self.milvus_down_s:g}s, restarted as pid "
                      f"{server.proc.pid}", proc.pid, at)

    def _node(self) -> Killed:
        workers = [n for n in self.state.nodes if n.name != "head" and "generator" not in n.types]
        if not workers or workers[-1].proc.process() is None:
            raise RuntimeError("no running CPU-only worker node to kill")
        node = workers[-1]
        at = time.monotonic()
        pid = kill_raylet(node)
        return Killed(f"raylet pid {pid} of {node.name}", pid, at, node=node.name)

    def whole(self, fault: Fault, killed: Killed) -> bool:
        """Whether the app is whole again after ``killed`` (see the module docstring)."""
        try:
            if httpx.get(f"{self.state.http_url}/readyz", timeout=10).status_code != 200:
                return False
            snap = snapshot(self.state, timeout_s=self.snapshot_timeout_s)
        except Exception:  # noqa: BLE001 - the proxy or the controller is still down: not whole yet
            return False
        if not snap["settled"]:
            return False
        if fault.kind == "replica":
            running = {r["actor_id"] for r in snap["deployments"][fault.target]["replicas"].values()
                       if r["state"] == "RUNNING"}
            return killed.actor_id not in running
        if fault.kind in ACTOR_CLASSES:
            if fault.kind == "proxy" and any(p["status"] != "HEALTHY" for p in snap["proxies"].values()):
                return False
            return any(a.pid != killed.pid for a in alive_actors(self.actor_class(fault), self.state.address))
        if fault.kind == "node":  # settled alone holds until Ray notices the node is gone
            return not any(n["name"] == killed.node and (n["process_running"] or n["ray_alive"])
                           for n in snap["nodes"])
        return True

    def wait_whole(self, fault: Fault, killed: Killed, timeout_s: float, poll_s: float = 1.0) -> float | None:
        """Poll :meth:`whole` for up to ``timeout_s``; the monotonic time it became whole, or None."""
        deadline = killed.at + timeout_s
        while time.monotonic() < deadline:
            if self.whole(fault, killed):
                return time.monotonic()
            time.sleep(poll_s)
        return None
