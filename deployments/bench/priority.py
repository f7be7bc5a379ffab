"""A load generator on the server's own machine must not take the server's CPU first.

Ray starts every worker process at niceness 15 (``RAY_worker_niceness``, so that a busy worker
yields to the raylet and the GCS): Serve's proxy, every replica and the vLLM engine run at 15,
and a process started from a shell runs at 0. On one machine, a load generator at 0 then has
about 28 times the CPU weight of each server process (Linux's weights for niceness 0 and 15:
1024 and 36): under a flood it is served first, and the server, refusing or answering, waits
behind its own clients. A client on another machine takes nothing from the server, so on the
server's machine the generator runs at the niceness of the process serving the URL.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import psutil


@dataclass(frozen=True)
class Yielded:
    """What :func:`yield_to_local_server` did."""

    server_pid: int
    server_nice: int
    before: int
    after: int

    def describe(self) -> str:
        change = (f"this load generator {self.before} -> {self.after}" if self.after != self.before
                  else f"this load generator already at {self.after}")
        return (f"the server on this machine (pid {self.server_pid}) runs at niceness {self.server_nice}; {change}, "
                "so it does not take the server's CPU first")


def listener_pid(port: int) -> int | None:
    """The pid of the process listening on TCP ``port`` on this machine (None: none, or not ours to see)."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return None
    return next((c.pid for c in conns if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
                 and c.pid), None)


def is_local(host: str) -> bool:
    """Whether ``host`` names this machine: a loopback name or address, or one of its own addresses."""
    try:
        addrs = {ai[4][0] for ai in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    own = {a.address for nics in psutil.net_if_addrs().values() for a in nics}
    return all(ipaddress.ip_address(a.split("%")[0]).is_loopback or a in own for a in addrs)


def yield_to_local_server(url: str) -> Yielded | None:
    """Raise this process's niceness to that of the process serving ``url`` when it runs on this
    machine (never lower it: that needs privileges and would take CPU from everything else).

    Returns None when the server is elsewhere or cannot be found.
    """
    parts = urlsplit(url)
    if not parts.hostname or not is_local(parts.hostname):
        return None
    pid = listener_pid(parts.port or (443 if parts.scheme == "https" else 80))
    if pid is None:
        return None
    try:
        server_nice = psutil.Process(pid).nice()
    except psutil.Error:
        return None
    before = os.nice(0)
    after = os.nice(server_nice - before) if server_nice > before else before
    return Yielded(pid, server_nice, before, after)
