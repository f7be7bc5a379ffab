"""Start and stop the whole single-machine stack: Milvus Lite server, Ray, Serve, the app.

Shared by ``ragserve serve``/``ragserve demo`` and the integration tests, so the tests run
exactly what users run. Everything started here is stopped here, by handle or pid: a local
Ray started by ``ray.init`` is shut down with ``ray.shutdown`` (never ``ray stop``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deployments import envs
from deployments.config import AppConfig, config_file, config_path, load_config_or_defaults, load_serve_yaml
from deployments.errors import ConfigError
from deployments.search.lite import LiteServer, is_listening, local_endpoint

log = logging.getLogger(__name__)

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


#: Tries at starting a local Ray. Ray 2.60 waits a fixed 30 s (no setting) for a new node's
#: raylet to register with its GCS; on 2 loaded cores one start in a CI run missed it, the
#: raylet not even logging yet (a bulk ingest started right after a stack came up).
LOCAL_RAY_TRIES = 3
#: What Ray's node start raises when that wait runs out (a plain Exception, matched by text).
_NODE_START_TIMEOUT = "timed out during startup"


def init_ray(address: str | None, found_here: bool = False, **kwargs: Any) -> None:
    """``ray.init`` with ragserve's driver environment; a local start that misses Ray's fixed
    raylet-registration wait is retried, after stopping every process that try started.

    Args:
        address: a cluster to join (tried once: a failure there is not about this machine's
            load), or None to start a local Ray.
        found_here: ``address`` is a cluster found running on this machine
            (:func:`ray_address_serving`): authenticate as Ray does for one its ``address="auto"``
            finds, with the token a local start left (Ray 2.60 sends its token to an explicit
            address only when ``RAY_AUTH_MODE=token`` says so, and a local ``ray.init`` enables
            token auth by default).
        kwargs: passed to ``ray.init``.
    """
    import psutil
    import ray

    if address is not None:
        if found_here:
            from ray._private.authentication.authentication_token_setup import (
                maybe_enable_token_auth_if_token_available,
            )

            maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
        ray.init(address=address, **kwargs)  # the cluster's own settings hold: no driver variables
        return
    envs.prepare_local_ray()
    me = psutil.Process()
    for attempt in range(1, LOCAL_RAY_TRIES + 1):
        before = {p.pid for p in me.children(recursive=True)}
        try:
            ray.init(**kwargs)
            return
        except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception here
            if _NODE_START_TIMEOUT not in str(e) or attempt == LOCAL_RAY_TRIES:
                raise
            # The failed node is not reachable from here: its processes are this process's
            # new children (GCS, raylet, log monitor, reaper), so those are what is stopped.
            started = [p for p in me.children(recursive=True) if p.pid not in before]
            for p in started:
                with contextlib.suppress(psutil.NoSuchProcess):  # one may have exited by itself
                    p.terminate()
            _, alive = psutil.wait_procs(started, timeout=10)
            for p in alive:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
            ray.shutdown()
            log.warning("local Ray did not start (%s); stopped its %d processes, try %d of %d",
                        e, len(started), attempt + 1, LOCAL_RAY_TRIES)


def http_endpoint(path: str | Path | None = None) -> tuple[str, int]:
    """``(host, port)`` of a serve config YAML's ``http_options`` (default file: ``RAGSERVE_CONFIG``,
    else the shipped one; without a file, Serve's defaults on loopback)."""
    p = config_path(path)
    http = (load_serve_yaml(p).get("http_options") or {}) if p.exists() else {}
    return http.get("host", "127.0.0.1"), int(http.get("port", 8000))


#: The flag every Ray process of a node but the workers carries (raylet, agents): the cluster's GCS.
_GCS_FLAG = "--gcs-address="


def ray_address_serving(port: int) -> str | None:
    """The GCS address of the local Ray cluster whose process listens on TCP ``port`` (a Serve
    proxy), or None when no process of this machine that this user may inspect listens there, or
    the listener is not part of a Ray node.

    Ray's own ``ray.init(address="auto")`` connects to the cluster last started by ``ray start``,
    or to any one it finds when ``ray.init`` started them: with several clusters on one machine
    that may be another one. Following the listening socket to its process and up to the raylet
    that started it (Ray workers rename themselves ``ray::...``; the raylet keeps its arguments)
    names the cluster behind this very port.
    """
    import psutil

    try:
        owners = {c.pid for c in psutil.net_connections("tcp")
                  if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid}
    except psutil.AccessDenied:
        return None
    for pid in owners:
        with contextlib.suppress(psutil.Error):
            proc: psutil.Process | None = psutil.Process(pid)
            while proc is not None:
                found = next((a[len(_GCS_FLAG):] for a in proc.cmdline() if a.startswith(_GCS_FLAG)), None)
                if found:
                    return found
                proc = proc.parent()
    return None


def check_exposure(cfg: AppConfig, host: str) -> None:
    """Refuse to serve an open app (no API keys) beyond loopback, unless ``auth.mode: off`` says
    so on purpose; on loopback, say loudly that it is open.

    Raises:
        ConfigError: an open app bound to a non-loopback address.
    """
    if not cfg.auth.open:
        return
    import ipaddress

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and cfg.auth.mode != "off":
        raise ConfigError(f"refusing to serve on {host} without API keys: set auth.keys_file (see `ragserve keys`), "
                          "or auth.mode: off to run open on purpose")
    log.warning("ragserve runs WITHOUT API keys on %s: every caller has every scope (auth.keys_file enables keys)",
                host)


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

    @classmethod
    def from_config_file(cls, path: str | Path | None = None, **kw: Any) -> "LocalStack":
        """The stack of a serve config YAML (default: ``RAGSERVE_CONFIG``, else the shipped one),
        on the host and port of its ``http_options``; without a file, the schema's defaults."""
        chosen = config_file(path)
        if chosen is not None:
            log.info("config: %s", chosen)
        else:
            # The shipped file is found relative to the working directory: started elsewhere, the
            # app differs from the shipped one (its encoder backend, CPU shares), silently until now.
            log.warning("no config file (%s is not under %s and RAGSERVE_CONFIG is unset): running the schema's "
                        "defaults, not the shipped config; --config names one", config_path(), Path.cwd())
        host, port = http_endpoint(chosen)
        return cls(load_config_or_defaults(chosen), host=host, port=port, **kw)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "LocalStack":
        """Bring everything up; returns when every replica is running (the cold start)."""
        import ray
        from ray import serve

        from deployments.app import build_app

        check_exposure(self.cfg, self.host)
        t0 = time.perf_counter()
        self._milvus = ensure_milvus(self.cfg)
        if not ray.is_initialized():
            init_ray(self.ray_address, include_dashboard=False, runtime_env=envs.runtime_env(passthrough=True),
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

