"""Deploying the app across the local cluster and reading back where its replicas run."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from deployments.localcluster.nodes import ClusterState, ProcRef, _auth_env, placement_args, port_is_free

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- Ray drivers
def _connect(address: str) -> None:
    _auth_env()  # before Ray is imported: it reads RAY_AUTH_MODE once
    import ray

    # This process is a driver of *this* cluster only; the app's env and setup hook come with the app.
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)


def _wait_nodes(count: int, timeout_s: float) -> None:
    import ray

    deadline = time.monotonic() + timeout_s
    while sum(n["Alive"] for n in ray.nodes()) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"fewer than {count} Ray nodes alive after {timeout_s:.0f}s")
        time.sleep(0.5)


def deploy_app(state: ClusterState, serve_yaml: dict[str, Any], timeout_s: float = 120.0) -> ClusterState:
    """Deploy the Serve config's application across the cluster, each stage on its worker type.

    Starts a milvus-lite server first when the configured URI is local and unserved. The proxy runs
    on the head only: every node here shares 127.0.0.1, so one HTTP port can have one proxy.
    Returns ``state`` with the URL, app name and Milvus recorded (and saved).
    """
    _auth_env()  # before Ray is imported: it reads RAY_AUTH_MODE once
    import ray
    from ray import serve

    from deployments.app import build_app
    from deployments.config import parse_app_config
    from deployments import envs
    from deployments.stack import ensure_milvus

    app = serve_yaml["applications"][0]
    cfg = parse_app_config(placement_args(app.get("args") or {}), where="applications[0].args")
    t0 = time.perf_counter()
    lite = ensure_milvus(cfg)
    if lite is not None and lite.proc is not None:
        state.milvus = ProcRef.of(lite.proc.pid)
    state.milvus_uri = cfg.search.milvus.uri
    state.save()
    http = dict(serve_yaml.get("http_options") or {})
    http.setdefault("host", "127.0.0.1")
    http.setdefault("port", 8000)
    if not port_is_free(int(http["port"])):  # the proxy would fail to bind and serve.run wait forever
        raise RuntimeError(f"HTTP port {http['port']} on 127.0.0.1 is in use (http_options.port)")
    if serve_yaml.get("proxy_location", "HeadOnly") != "HeadOnly":
        log.info("proxy_location %s -> HeadOnly: all nodes share 127.0.0.1", serve_yaml["proxy_location"])
    # The YAML's runtime_env (a user may add to it) else the declared one; this shell's RAGSERVE_* on top.
    runtime_env = json.loads(json.dumps(app.get("runtime_env") or envs.runtime_env()))
    runtime_env.setdefault("env_vars", {}).update(envs.replica_env(passthrough=True))
    ray.init(address=state.address, runtime_env=runtime_env, logging_level=logging.WARNING, log_to_driver=False)
    try:
        _wait_nodes(len(state.nodes), timeout_s)
        serve.start(proxy_location="HeadOnly", http_options=http)
        # Serve's controller is a detached actor: the app outlives this driver.
        serve.run(build_app(cfg), name=app.get("name", "ragserve"), route_prefix=app.get("route_prefix", "/"))
    finally:
        ray.shutdown()
    state.http_url, state.app_name = f"http://{http['host']}:{http['port']}", app.get("name", "ragserve")
    state.timings["app_deploy_s"] = time.perf_counter() - t0
    state.save()
    return state


def snapshot(state: ClusterState, timeout_s: float = 30.0) -> dict[str, Any]:
    """Nodes (process vs Ray's view), the app's replicas with their nodes and actor ids, and the
    proxies; needs a connected driver.

    ``settled`` is true when Ray's view agrees with the processes (a node whose process is gone is
    reported dead), the app is RUNNING and every deployment is HEALTHY with its target number of
    RUNNING replicas, all on live nodes.

    Raises:
        ray.exceptions.GetTimeoutError: the Serve controller did not answer within ``timeout_s``
            (it is down or restarting); other Ray errors while it is unreachable.
    """
    import ray
    from ray.serve import context

    by_port = {n["NodeManagerPort"]: n for n in sorted(ray.nodes(), key=lambda n: n["Alive"])}
    nodes, alive_ids, agree = [], set(), True
    for n in state.nodes:
        ray_node = by_port.get(n.ports["node_manager"], {})
        running, alive = n.proc.process() is not None, bool(ray_node.get("Alive"))
        agree &= running == alive
        if alive:
            alive_ids.add(ray_node["NodeID"])
        nodes.append({"name": n.name, "types": n.types, "process_running": running, "ray_alive": alive,
                      "node_id": ray_node.get("NodeID")})
    names = {node["node_id"]: node["name"] for node in nodes}
    # The controller's instance details (what the dashboard's Serve API returns), reached without the
    # dashboard: the only Serve API that says on which node each replica runs.
    details = ray.get(context._connect()._controller.get_serve_instance_details.remote(), timeout=timeout_s)
    app = (details.get("applications") or {}).get(state.app_name or "ragserve", {})
    deployments, healthy = {}, app.get("status") == "RUNNING"
    for name, d in (app.get("deployments") or {}).items():
        running = [r for r in d["replicas"] if r["state"] == "RUNNING"]
        deployments[name] = {"status": d["status"], "message": d.get("message", ""),
                             "target": d["target_num_replicas"],
                             "replicas": {r["replica_id"]: {"state": r["state"],
                                                            "node": names.get(r.get("node_id"), r.get("node_id")),
                                                            "actor_id": r.get("actor_id")}
                                          for r in d["replicas"]}}
        healthy &= (d["status"] == "HEALTHY" and len(running) == d["target_num_replicas"]
                    and all(r.get("node_id") in alive_ids for r in running))
    proxies = {names.get(node_id, node_id): {"status": p.get("status"), "actor_id": p.get("actor_id")}
               for node_id, p in (details.get("proxies") or {}).items()}
    return {"nodes": nodes, "app_status": app.get("status"), "deployments": deployments, "proxies": proxies,
            "settled": bool(agree and healthy)}


def cluster_status(state: ClusterState, wait_s: float = 0.0, poll_s: float = 2.0) -> dict[str, Any]:
    """:func:`snapshot`, polled for up to ``wait_s`` seconds until it is settled."""
    _connect(state.address)
    import ray

    try:
        deadline = time.monotonic() + wait_s
        while True:
            snap = snapshot(state)
            if snap["settled"] or time.monotonic() >= deadline:
                return snap
            time.sleep(poll_s)
    finally:
        ray.shutdown()


