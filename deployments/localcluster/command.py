"""``ragserve cluster up|status|down|kill-raylet``."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from deployments.localcluster.app import cluster_status, deploy_app
from deployments.localcluster.nodes import (
    DEFAULT_WORKERS,
    STATE_FILE,
    ClusterState,
    WorkerSpec,
    kill_raylet,
    start_nodes,
    stop_cluster,
)

# --------------------------------------------------------------------------- CLI
DEFAULT_RUN_DIR = "data/cluster"


def add_parser(sub: Any) -> None:
    """Register ``ragserve cluster up|status|down|kill-raylet``."""
    group = sub.add_parser("cluster", help="a local multi-node Ray cluster running the app")
    csub = group.add_subparsers(dest="cluster_cmd", required=True)
    for name, fn in (("up", cmd_up), ("status", cmd_status), ("down", cmd_down), ("kill-raylet", cmd_kill)):
        s = csub.add_parser(name, help=fn.__doc__.splitlines()[0])
        s.add_argument("--run-dir", default=DEFAULT_RUN_DIR, help=f"state and logs (default {DEFAULT_RUN_DIR})")
        s.set_defaults(fn=fn)
        if name == "up":
            s.add_argument("--worker", action="append", type=WorkerSpec.parse, dest="workers",
                           help="worker node TYPE[+TYPE][:CPUS], types cpu/generator; repeat per node "
                           "(default: --worker cpu:2 --worker generator:1)")
            s.add_argument("--base-port", type=int, help="first port of the node port blocks (default: free)")
            s.add_argument("--dashboard", action="store_true", help="run Ray's dashboard on the head")
            s.add_argument("--no-deploy", action="store_true", help="start the nodes only")
        elif name == "status":
            s.add_argument("--wait", type=float, default=0.0, help="poll up to this many seconds until settled")
            s.add_argument("--json", action="store_true", help="print the snapshot as JSON")
        elif name == "kill-raylet":
            s.add_argument("node", help="node name, e.g. worker-2")


def cmd_up(args: Any) -> int:
    """Start the head and worker nodes, then deploy the app across them."""
    from deployments.config import config_path, load_serve_yaml

    run_dir = Path(args.run_dir)
    serve_yaml = load_serve_yaml(config_path(args.config))
    state = start_nodes(run_dir, args.workers or DEFAULT_WORKERS, args.base_port, args.dashboard)
    try:
        for n in state.nodes:
            print(f"{n.name:9} pid {n.proc.pid:7d}  {'+'.join(n.types) or 'head (no app work)':22} "
                  f"cpus {n.num_cpus}  node-manager port {n.ports['node_manager']}")
        if not args.no_deploy:
            deploy_app(state, serve_yaml)
            print(f"ragserve on {state.http_url} (Milvus {state.milvus_uri}); "
                  f"nodes {state.timings['nodes_start_s']:.1f}s, app {state.timings['app_deploy_s']:.1f}s")
    except BaseException:
        stop_cluster(state)
        raise
    print(f"Ray at {state.address} (temp dir {state.temp_dir}); state in {run_dir / STATE_FILE}")
    return 0


def cmd_status(args: Any) -> int:
    """Print nodes and replicas (exit 1 unless settled)."""
    # Ray prints cluster events (e.g. a node marked dead) to the driver's stdout: keep stdout for the report.
    with contextlib.redirect_stdout(sys.stderr):
        snap = cluster_status(ClusterState.load(args.run_dir), args.wait)
    if args.json:
        print(json.dumps(snap, indent=2))
    else:
        for n in snap["nodes"]:
            print(f"{n['name']:9} {'+'.join(n['types']) or 'head':14} process {'up' if n['process_running'] else 'gone':4}"
                  f"  ray {'alive' if n['ray_alive'] else 'dead'}")
        print(f"app: {snap['app_status']}")
        for name, d in snap["deployments"].items():
            where = ", ".join(f"{r['state']}@{r['node']}" for r in d["replicas"].values())
            print(f"  {name:12} {d['status']:10} {d['target']} wanted: {where}")
    return 0 if snap["settled"] else 1


def cmd_down(args: Any) -> int:
    """Stop every process the cluster's state file records (never `ray stop`)."""
    try:
        state = ClusterState.load(args.run_dir)
    except FileNotFoundError:
        print(f"no cluster state in {args.run_dir}", file=sys.stderr)
        return 1
    report = stop_cluster(state)
    print(f"stopped {', '.join(report['nodes']) or 'no running nodes'}"
          + ("; milvus-lite server" if report["milvus"] else "")
          + (f" (SIGKILL needed for {report['killed']})" if report["killed"] else ""))
    return 0


def cmd_kill(args: Any) -> int:
    """SIGKILL one node's raylet (a node failure, for fault drills)."""
    pid = kill_raylet(ClusterState.load(args.run_dir).node(args.node))
    print(f"killed raylet {pid} of {args.node}")
    return 0
