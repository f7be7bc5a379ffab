"""Every environment variable ragserve reads or sets, declared once (vLLM's ``envs.py`` is the model).

Four kinds:

* ``read``: toggles and secrets ragserve reads (all ``RAGSERVE_*``), through :func:`env` only;
  a typo is a bug, so reading an undeclared name raises. Configuration always wins over
  them: they hold only what does not belong in a YAML (secrets, the config's own path).
* ``replica``: the fixed environment of every Ray worker process of the app, in
  :func:`replica_env`. It is what ``cluster/serve_config.yaml`` declares as its
  ``runtime_env.env_vars`` (a unit test keeps the two equal), and what ``ragserve serve``, the
  local cluster, bulk ingestion and the RayService (through the same YAML) start workers with.
* ``engine``: set by the generator replica from its config right before vLLM starts (vLLM
  reads them from the environment). They are assigned, never ``setdefault``: an inherited
  value must not silently override the config.
* ``node``: Ray settings every Ray node of the app gets in its environment, where Ray's own
  processes (raylet, GCS, the Serve proxy and controller) read them: a ragserve command puts
  them in its own environment before it starts a local Ray (:func:`prepare_local_ray`), the
  local cluster's nodes and the RayService's Ray containers get them from :func:`node_env`. An
  operator's own value wins: they are Ray's overrides, not ragserve's config.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class EnvVar:
    """One environment variable: who reads or sets it, and why."""

    name: str
    kind: Literal["read", "replica", "engine", "node"]
    help: str
    value: str | None = None  # the fixed value of a `replica` variable, the default of a `node` one


VARS: tuple[EnvVar, ...] = (
    EnvVar("RAGSERVE_CONFIG", "read", "Path of the serve config YAML used by the CLI (default cluster/serve_config.yaml)."),
    EnvVar("RAGSERVE_CACHE_DIR", "read", "Where converted model weights are cached (default ~/.cache/ragserve)."),
    EnvVar("RAGSERVE_MILVUS_TOKEN", "read", "Token (or user:password) for a Milvus server; never put it in YAML."),
    EnvVar("RAGSERVE_API_KEY", "read", "API key the CLI's clients (ragserve eval, tune, ingest) send to a server "
           "with keys; ingest also writes as its tenant."),
    EnvVar("RAGSERVE_LOG_LEVEL", "read", "Log level of ragserve's own loggers (default INFO)."),
    EnvVar("HF_HUB_OFFLINE", "replica", "No model-hub traffic: models are bundled, local paths or pre-cached.", "1"),
    EnvVar("TOKENIZERS_PARALLELISM", "replica",
           "No tokenizer thread pools fighting the replicas' cores (and no fork warnings).", "false"),
    EnvVar("RAY_SERVE_LOG_TO_STDERR", "replica",
           "Replica logs go to Serve's log files only: streaming every access-log line to the driver "
           "cost a large share of the CPU under load (docs/benchmarks.md).", "0"),
    EnvVar("VLLM_CONFIGURE_LOGGING", "replica",
           "vLLM must not call dictConfig: it would close Serve's log handlers in the generator replica.", "0"),
    EnvVar("VLLM_CPU_KVCACHE_SPACE", "engine", "KV cache of a CPU engine in GiB: generator.cpu_kv_cache_gib."),
    EnvVar("VLLM_CPU_OMP_THREADS_BIND", "engine",
           "Cores the CPU engine's OpenMP threads are bound to: the resolved generator.hardware.threads_bind."),
    EnvVar("OMP_NUM_THREADS", "engine", "OpenMP threads of the CPU engine: the resolved generator.hardware.threads."),
    EnvVar("VLLM_HOST_IP", "engine", "A single-process engine talks to itself only: its sockets stay on loopback."),
    EnvVar("LD_PRELOAD", "engine",
           "Allocator/OpenMP libraries preloaded into the CPU engine process (generator.hardware.preload)."),
    EnvVar("RAY_gcs_server_port_wait_time_s", "node",
           "Seconds a starting local Ray waits for its GCS to bind. Ray's 30 s default elapsed on a loaded "
           "2-core machine (a bulk ingest started next to a running stack), failing the start.", "120"),
    EnvVar("RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE", "node",
           "Replica log records are written as they come, also where an operator turns on Ray Serve's "
           "throughput-optimised mode (RAY_SERVE_THROUGHPUT_OPTIMIZED=1, which buffers them 1000 at a time): "
           "the audit lines of writes and admin calls must not wait in memory, or be lost with a crashed "
           "replica (docs/benchmarks.md).", "1"),
    EnvVar("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", "node",
           "Ray Serve's hook for HTTP proxy middleware: ragserve's refusal gate, so a key the ingress has just "
           "refused for its request rate is refused by the proxy itself until it may come back (a refusal "
           "answered by the ingress cost 12 ms of CPU; deployments/ingress/gate.py). An operator's own "
           "callback replaces it.", "deployments.ingress.gate:proxy_middlewares"),
    EnvVar("RAY_SERVE_USE_GRPC_BY_DEFAULT", "node",
           "Calls between deployments (and from the proxy to the ingress) go over gRPC to each replica's own "
           "server instead of as Ray object references. Measured against the default in one run (AMD EPYC Zen 4, "
           "2 cores): a retrieval at c=1 43.6 vs 53.9 ms p50, 1.25x the retrievals/s at c=16, streamed generation "
           "at c=16 0.83x vs 0.71x of the bare engine (docs/benchmarks.md, 'Transports'). The proxy's middleware, "
           "streaming and a client's disconnect are unchanged. A handle whose process was started without it "
           "still passes by reference, which works too.", "1"),
    EnvVar("RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH", "node",
           "Largest message (bytes) a replica's gRPC server and a handle's gRPC channel take. gRPC's 4 MiB default "
           "is less than one POST /v1/documents at the 1 MB body limit sends to the search stage (its ~1,300 "
           "chunks' vectors as float lists are about 4.3 MiB): 64 MiB.", "67108864"),
)
_BY_NAME = {v.name: v for v in VARS}


def env(name: str, default: str | None = None) -> str | None:
    """Read a declared ``read`` variable (an undeclared or non-``read`` name raises KeyError)."""
    var = _BY_NAME.get(name)
    if var is None or var.kind != "read":
        raise KeyError(f"undeclared environment variable {name}")
    return os.environ.get(name, default)


def replica_env(passthrough: bool = False) -> dict[str, str]:
    """The environment of every worker process of the app.

    Args:
        passthrough: also pass this process's own ``read`` variables on (``ragserve serve``
            started with ``RAGSERVE_MILVUS_TOKEN`` set hands the token to its replicas).
    """
    out = {v.name: v.value for v in VARS if v.kind == "replica" and v.value is not None}
    if passthrough:
        out.update({v.name: os.environ[v.name] for v in VARS if v.kind == "read" and v.name in os.environ})
    return out


def node_env(inherit: bool = True) -> dict[str, str]:
    """The ``node`` variables with their values: an operator's own value in this process's
    environment wins, unless ``inherit`` is false (rendered manifests hold the declared values)."""
    return {v.name: os.environ.get(v.name, v.value) if inherit else v.value
            for v in VARS if v.kind == "node" and v.value is not None}


def prepare_local_ray() -> None:
    """Put the ``node`` variables into this process's environment (unless already set) before
    ``ray.init`` starts a local Ray."""
    for name, value in node_env().items():
        os.environ.setdefault(name, value)


def declared(kind: str) -> tuple[str, ...]:
    """Names of the declared variables of one kind."""
    return tuple(v.name for v in VARS if v.kind == kind)


#: Runs in every Ray worker process before any replica starts (see deployments/procsetup.py).
WORKER_SETUP_HOOK = "deployments.procsetup.worker_setup"


def runtime_env(passthrough: bool = False) -> dict[str, object]:
    """The Ray ``runtime_env`` of the app's workers: :func:`replica_env` and the setup hook."""
    return {"env_vars": replica_env(passthrough), "worker_process_setup_hook": WORKER_SETUP_HOOK}


def shell_exports() -> str:
    """``node`` variables as POSIX shell lines that keep an operator's own value, for a node started
    by a script (the Ray cluster launcher's ``ray start`` commands: ``eval "$(python -m deployments.envs)"``)."""
    import shlex

    return "".join(f": \"${{{name}:={shlex.quote(value)}}}\"; export {name}\n"
                   for name, value in node_env(inherit=False).items())


if __name__ == "__main__":
    print(shell_exports(), end="")
