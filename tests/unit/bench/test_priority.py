"""The load generator takes the niceness of a server on its own machine (deployments/bench/priority.py):
a real listening process at a known niceness, and the generator's side run in a child process so that
this test process keeps its own priority."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap

import pytest

from deployments.bench import priority

SERVER = textwrap.dedent("""
    import os, socket, sys
    os.nice(int(sys.argv[1]))
    s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
    print(s.getsockname()[1], flush=True)
    sys.stdin.read()
""")
CLIENT = textwrap.dedent("""
    import os, sys
    from deployments.bench import priority
    os.nice(int(sys.argv[2]))
    y = priority.yield_to_local_server(sys.argv[1])
    print(None if y is None else (y.server_nice, y.before, y.after, os.nice(0)))
""")


#: Niceness is relative to this process's own (the suite may itself run niced); 19 is the most.
BASE = os.nice(0)
pytestmark = pytest.mark.skipif(BASE > 9, reason="running too niced to set niceness above it")


def _yield(url: str, more: int) -> str:
    """What a generator started at BASE + ``more`` did: (server's, before, after, now) less BASE."""
    out = subprocess.run([sys.executable, "-c", CLIENT, url, str(more)], capture_output=True, text=True,
                         check=True, timeout=60).stdout.strip()
    return out if out == "None" else str(tuple(n - BASE for n in ast.literal_eval(out)))


@pytest.fixture
def server_at_7():
    proc = subprocess.Popen([sys.executable, "-c", SERVER, "7"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        yield int(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()


def test_a_generator_on_the_servers_machine_takes_its_niceness(server_at_7: int) -> None:
    if priority.listener_pid(server_at_7) is None:
        pytest.skip("this machine does not show which process listens on a port")
    assert _yield(f"http://127.0.0.1:{server_at_7}", 0) == "(7, 0, 7, 7)"  # relative to BASE
    assert _yield(f"http://localhost:{server_at_7}/v1", 2) == "(7, 2, 7, 7)"


def test_it_never_lowers_its_own_niceness(server_at_7: int) -> None:
    if priority.listener_pid(server_at_7) is None:
        pytest.skip("this machine does not show which process listens on a port")
    assert _yield(f"http://127.0.0.1:{server_at_7}", 10) == "(7, 10, 10, 10)"


def test_a_server_elsewhere_or_absent_changes_nothing() -> None:
    assert _yield("http://192.0.2.1:8000", 0) == "None"  # TEST-NET-1: never this machine
    assert priority.is_local("192.0.2.1") is False and priority.is_local("127.0.0.1") is True
