"""An open server (no API keys) is refused beyond loopback unless auth.mode says off."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from deployments.config import parse_app_config
from deployments.errors import ConfigError
from deployments.stack import LOCAL_RAY_TRIES, check_exposure, http_endpoint, init_ray, ray_address_serving


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "ragserve.example.org"])
def test_open_beyond_loopback_is_refused(host: str) -> None:
    with pytest.raises(ConfigError, match="without API keys"):
        check_exposure(parse_app_config({}), host)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.7"])
def test_open_on_loopback_runs_loudly(host: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        check_exposure(parse_app_config({}), host)
    assert "WITHOUT API keys" in caplog.text


def test_keys_or_an_explicit_off_allow_any_address(tmp_path) -> None:
    check_exposure(parse_app_config({"auth": {"keys_file": str(tmp_path / "keys.yaml")}}), "0.0.0.0")
    check_exposure(parse_app_config({"auth": {"mode": "off"}}), "0.0.0.0")
    with pytest.raises(ConfigError, match="keys_file"):
        parse_app_config({"auth": {"mode": "keys"}})


# --------------------------------------------------------------------------- starting a local Ray
class _FakeRay:
    """``ray.init`` that, like a node start missing Ray's raylet wait, leaves processes behind."""

    def __init__(self, failures: int, message: str = "The current node timed out during startup.") -> None:
        self.failures, self.message = failures, message
        self.calls: list[dict] = []
        self.left_behind: list[subprocess.Popen] = []

    def init(self, **kwargs) -> None:
        self.calls.append(kwargs)
        if len(self.calls) <= self.failures:
            self.left_behind.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]))
            raise Exception(self.message)  # what Ray raises: a bare Exception

    def shutdown(self) -> None:
        pass


@pytest.fixture
def fake_ray(monkeypatch: pytest.MonkeyPatch):
    def install(**kw) -> _FakeRay:
        fake = _FakeRay(**kw)
        monkeypatch.setitem(sys.modules, "ray", fake)
        return fake
    yield install


def test_local_ray_start_that_misses_the_raylet_wait_is_retried_and_cleaned(fake_ray) -> None:
    keep = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # started before: left alone
    try:
        fake = fake_ray(failures=2)
        init_ray(None, include_dashboard=False)
        assert len(fake.calls) == 3 and fake.calls[-1] == {"include_dashboard": False}
        for p in fake.left_behind:  # every failed try's processes were stopped
            assert p.wait(timeout=15) is not None
        assert keep.poll() is None
    finally:
        keep.kill()
        keep.wait()


def test_a_process_of_the_failed_try_that_is_already_gone_is_not_an_error(fake_ray, monkeypatch) -> None:
    # The race: a process is listed as the failed try's, then exits and is reaped before it is
    # stopped; stopping it raises NoSuchProcess, which must not end the retries.
    import psutil

    gone: list[psutil.Process] = []
    listed = psutil.Process.children
    monkeypatch.setattr(psutil.Process, "children", lambda self, recursive=False: listed(self, recursive) + gone)
    fake = fake_ray(failures=1)
    real_init = fake.init

    def init(**kwargs) -> None:
        if not gone:
            child = subprocess.Popen([sys.executable, "-c", "pass"])
            gone.append(psutil.Process(child.pid))
            child.wait()  # exited and reaped: the listed Process now names nothing
        real_init(**kwargs)

    fake.init = init
    init_ray(None)
    assert len(fake.calls) == 2
    for p in fake.left_behind:
        assert p.wait(timeout=15) is not None


def test_other_ray_errors_and_the_last_try_are_raised(fake_ray) -> None:
    fake = fake_ray(failures=1, message="Permission denied: /tmp/ray")
    with pytest.raises(Exception, match="Permission denied"):
        init_ray(None)
    assert len(fake.calls) == 1
    fake = fake_ray(failures=LOCAL_RAY_TRIES)
    with pytest.raises(Exception, match="timed out during startup"):
        init_ray(None)
    assert len(fake.calls) == LOCAL_RAY_TRIES
    fake = fake_ray(failures=1)
    with pytest.raises(Exception, match="timed out"):  # joining a cluster: not this machine's load
        init_ray("ray://head:10001")
    assert fake.calls == [{"address": "ray://head:10001"}]
    for p in fake.left_behind:
        p.kill()
        p.wait()


def test_only_a_local_start_gets_the_driver_variables(fake_ray, monkeypatch: pytest.MonkeyPatch) -> None:
    from deployments import envs

    for name in envs.declared("node"):
        monkeypatch.setenv(name, "unset")  # the fixture restores the original state after the test
        monkeypatch.delenv(name)
    fake_ray(failures=0)
    init_ray("ray://head:10001")  # joining: the cluster's own settings hold
    assert not any(name in os.environ for name in envs.declared("node"))
    init_ray(None)
    assert os.environ["RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE"] == "1"


# --------------------------------------------------------------------------- finding a running server's Ray
def test_http_endpoint_is_the_serve_configs(tmp_path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text("http_options: {host: 0.0.0.0, port: 8123}\napplications: [{name: ragserve, args: {}}]\n")
    assert http_endpoint(path) == ("0.0.0.0", 8123)
    path.write_text("applications: [{name: ragserve, args: {}}]\n")
    assert http_endpoint(path) == ("127.0.0.1", 8000)  # Serve's defaults, on loopback
    assert http_endpoint(tmp_path / "missing.yaml") == ("127.0.0.1", 8000)


_LISTEN = """
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
print(s.getsockname()[1], flush=True)
time.sleep(60)
"""
# A node process (the raylet) carries the GCS address; the worker it starts renames itself and
# listens (the Serve proxy): the address is found by walking up from the listener.
_NODE = f"""
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", {_LISTEN!r}], stdout=subprocess.PIPE, text=True)
print(child.stdout.readline().strip(), flush=True)
child.wait()
"""


def _listening(argv: list[str]) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, start_new_session=True)
    return proc, int(proc.stdout.readline())


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, 9)  # its own session: the node and the worker it started
    proc.wait(10)


def test_the_ray_cluster_behind_a_port_is_found_through_the_listeners_parents() -> None:
    proc, port = _listening([sys.executable, "-c", _NODE, "--gcs-address=10.9.8.7:6379", "--other=1"])
    try:
        assert ray_address_serving(port) == "10.9.8.7:6379"
    finally:
        _stop(proc)


def test_a_port_not_served_by_ray_names_no_cluster() -> None:
    proc, port = _listening([sys.executable, "-c", _LISTEN])
    try:
        assert ray_address_serving(port) is None  # a listener, but no Ray node above it
    finally:
        _stop(proc)
    assert ray_address_serving(port) is None  # nothing listens any more


def test_rays_rule_for_a_cluster_found_here_is_still_there() -> None:
    """init_ray(found_here=True) authenticates as Ray does for a cluster its "auto" finds, through
    this private function of Ray 2.60: an upgrade that drops it must fail here, not in a join."""
    import inspect

    from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available

    assert "warn_if_disabled" in inspect.signature(maybe_enable_token_auth_if_token_available).parameters


def test_a_stack_started_without_a_config_file_says_so(tmp_path, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Started outside the repository, the shipped cluster/serve_config.yaml is not found and the
    schema's defaults run (another encoder backend, other CPU shares): the log names it."""
    from deployments.stack import LocalStack

    monkeypatch.delenv("RAGSERVE_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="deployments.stack"):
        stack = LocalStack.from_config_file(None)
    assert stack.cfg.encoder.backend == "torch"  # the schema's default, not the shipped openvino
    assert any(r.levelno == logging.WARNING and "schema's defaults" in r.getMessage() for r in caplog.records)


def test_a_stack_names_the_config_file_it_runs(tmp_path, monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    from pathlib import Path

    from deployments.stack import LocalStack

    shipped = Path(__file__).resolve().parents[2] / "cluster" / "serve_config.yaml"
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="deployments.stack"):
        stack = LocalStack.from_config_file(str(shipped))
    assert stack.cfg.encoder.backend == "openvino"
    assert any(f"config: {shipped}" in r.getMessage() for r in caplog.records)
    assert not any(r.levelno >= logging.WARNING and "schema's defaults" in r.getMessage() for r in caplog.records)
