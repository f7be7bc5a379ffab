"""A local milvus-lite server process, for when several processes share one embedded store.

A Milvus Lite ``.db`` file is locked to one process, but ragserve has several (search
replicas, the ingest CLI): so the embedded default runs ``milvus-lite server`` bound to
127.0.0.1 and everyone connects by URI, exactly as they would to a real Milvus server.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def local_endpoint(uri: str) -> tuple[str, int] | None:
    """``(host, port)`` when ``uri`` names a Milvus on this machine's loopback, else None."""
    u = urlparse(uri)
    if u.scheme not in ("http", "tcp", "grpc") or u.hostname not in LOOPBACK:
        return None
    return u.hostname, u.port or 19530


def is_listening(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class LiteServer:
    """Start and stop one ``milvus-lite server`` by its own pid (never anyone else's).

    Args:
        data_dir: where the server keeps its collections.
        port: TCP port on 127.0.0.1.
        log_path: server output (default ``<data_dir>/server.log``).
    """

    def __init__(self, data_dir: str | Path, port: int, log_path: str | Path | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.log_path = Path(log_path or self.data_dir / "server.log")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> "LiteServer":
        """Start the server and wait until it accepts connections.

        Raises:
            RuntimeError: the port is taken, or the server exited or did not come up in time.
        """
        if is_listening("127.0.0.1", self.port):
            raise RuntimeError(f"port {self.port} on 127.0.0.1 is already in use")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        exe = shutil.which("milvus-lite") or str(Path(sys.executable).with_name("milvus-lite"))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [exe, "server", "--data-dir", str(self.data_dir), "--host", "127.0.0.1", "--port", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"milvus-lite server exited with {self.proc.returncode}; see {self.log_path}")
            if is_listening("127.0.0.1", self.port):
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"milvus-lite server did not listen on port {self.port} within {timeout_s}s")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL) if this object started it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> "LiteServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
