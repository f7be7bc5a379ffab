"""The processes of a local ragserve stack, by role, and their resident memory and open files.

A stack started by this process (``LocalStack``: ``ray.init`` starts Ray here, and the milvus-lite
server is started from here too) has every process of the app among this process's descendants:
Ray's own (GCS, raylet, agents), its workers (Serve controller, HTTP proxy, one process per replica),
the vLLM engine processes under the generator replica, and milvus-lite. Ray names a worker process
by its actor (``ray::ServeReplica:ragserve:search``, ``ray::ServeController``, ``ray::ProxyActor``,
with ``.<method>`` appended while one runs), which gives each process a stable role.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

#: Roles that are not the app's: an idle pooled Ray worker has no actor yet.
IGNORED_ROLES = {"ray::IDLE"}


def role_of(name: str, cmdline: list[str]) -> str:
    """A process's role from its name and command line (pure: unit-tested).

    Ray workers: their actor class, without the running method (``ServeReplica:ragserve:search``,
    ``ServeController``, ``ProxyActor``); vLLM's processes: ``vllm:EngineCore``, ``vllm:Worker``; the
    milvus-lite server: ``milvus-lite``; other processes: ``ray:<executable or script>``.
    """
    title = cmdline[0] if cmdline else name
    if title.startswith("ray::"):
        return title.split(" ")[0].removeprefix("ray::").split(".")[0] or "ray::IDLE"
    if title.startswith("VLLM::"):  # vLLM's engine core and its workers name themselves so
        return "vllm:" + title.split(" ")[0].removeprefix("VLLM::")
    joined = " ".join(cmdline)
    if "milvus" in joined and " server" in joined:
        return "milvus-lite"
    script = next((a.rsplit("/", 1)[-1] for a in cmdline[1:] if a.endswith(".py")), "")
    return f"ray:{script or name}"


@dataclass(frozen=True)
class Sample:
    """One process at one time: resident memory (bytes) and open file descriptors."""

    t: float
    pid: int
    role: str
    rss: int
    fds: int


def app_processes(root: psutil.Process | None = None) -> list[tuple[psutil.Process, str]]:
    """The descendants of ``root`` (default: this process) with their roles; idle pooled workers
    and processes that exit while being read are left out."""
    root = root or psutil.Process()
    out = []
    for p in root.children(recursive=True):
        try:
            role = role_of(p.name(), p.cmdline())
        except psutil.Error:
            continue
        if role not in IGNORED_ROLES:
            out.append((p, role))
    return out


def sample(procs: Iterable[tuple[psutil.Process, str]], t: float | None = None) -> list[Sample]:
    """RSS and open fds of each process now (a process that exited since is skipped)."""
    now = time.monotonic() if t is None else t
    out = []
    for p, role in procs:
        try:
            with p.oneshot():
                out.append(Sample(now, p.pid, role, p.memory_info().rss, p.num_fds()))
        except psutil.Error:
            continue
    return out
