"""Start and stop the whole single-machine stack: Milvus Lite server, Ray, Serve, the app.

Shared by ``ragserve serve``/``ragserve demo`` and the integration tests, so the tests run
exactly what users run. Everything started here is stopped here, by handle or pid: a local
Ray started by ``ray.init`` is shut down with ``ray.shutdown`` (never ``ray stop``).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from deployments.config import AppConfig
from deployments.search.lite import LiteServer, is_listening, local_endpoint

log = logging.getLogger(__name__)

#: Environment every replica gets: no hub traffic, no tokenizer thread pools fighting the cores, and
#: replica logs to Serve's log files only: streaming every access-log line to the driver through
#: stderr cost a large share of the CPU under load (measured; see docs/benchmarks.md).
#: vLLM must not reconfigure logging (it would close Serve's log handlers in the generator replica).
REPLICA_ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_SERVE_LOG_TO_STDERR": "0",
               "VLLM_CONFIGURE_LOGGING": "0"}
#: Runs in every Ray worker process before any replica starts (see deployments/procsetup.py).
WORKER_SETUP_HOOK = "deployments.procsetup.worker_setup"


def ensure_milvus(cfg: AppConfig) -> LiteServer | None:
    """Start a milvus-lite server when the configured URI is a loopback address nobody serves.

    Returns the server when this call started it (the caller stops it), else None.
    """
    endpoint = local_endpoint(cfg.search.milvus.uri)
    if endpoint is None or is_listening(*endpoint):
        return None
    log.info("starting milvus-lite server on 127.0.0.1:%d (data in %s)", endpoint[1],
             cfg.search.milvus.lite_server_data_dir)
    return LiteServer(cfg.search.milvus.lite_server_data_dir, endpoint[1]).start()


@dataclass
class LocalStack:
    """The app on a local Ray instance, reachable on ``http://host:port``.

    Args:
        cfg: the application config.
        host: HTTP bind address (the proxy); loopback by default.
        port: HTTP port.
        ray_address: join this Ray cluster instead of starting a local one.
    """

    cfg: AppConfig
    host: str = "127.0.0.1"
    port: int = 8000
    ray_address: str | None = None
    app_name: str = "ragserve"
    timings: dict[str, float] = field(default_factory=dict)
    _milvus: LiteServer | None = None
    _own_ray: bool = False

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "LocalStack":
        """Bring everything up; returns when every replica is running (the cold start)."""
        import ray
        from ray import serve

        from deployments.app import build_app

        t0 = time.perf_counter()
        self._milvus = ensure_milvus(self.cfg)
        if not ray.is_initialized():
            env = {**REPLICA_ENV, **{k: v for k, v in os.environ.items() if k.startswith("RAGSERVE_")}}
            runtime_env = {"env_vars": env, "worker_process_setup_hook": WORKER_SETUP_HOOK}
            ray.init(address=self.ray_address, include_dashboard=False, runtime_env=runtime_env,
                     logging_level=logging.WARNING)
            self._own_ray = self.ray_address is None
        t1 = time.perf_counter()
        serve.start(http_options={"host": self.host, "port": self.port})
        serve.run(build_app(self.cfg), name=self.app_name, route_prefix="/")
        self.timings = {"ray_start_s": t1 - t0, "app_deploy_s": time.perf_counter() - t1,
                        "cold_start_s": time.perf_counter() - t0}
        return self

    def stop(self) -> None:
        """Stop what :meth:`start` started, in reverse order."""
        import ray
        from ray import serve

        try:
            if ray.is_initialized():
                serve.delete(self.app_name)
                if self._own_ray:
                    serve.shutdown()
        finally:
            if self._own_ray and ray.is_initialized():
                ray.shutdown()
            if self._milvus is not None:
                self._milvus.stop()

    def __enter__(self) -> "LocalStack":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

