"""The environment-variable registry: reads are declared, the replica environment is one fact."""

from __future__ import annotations

import os

from pathlib import Path

import pytest
import yaml

from deployments import envs

REPO = Path(__file__).resolve().parents[2]


def test_env_rejects_undeclared_names(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(KeyError):
        envs.env("RAGSERVE_CACHEDIR")
    with pytest.raises(KeyError):  # declared, but set by ragserve, not read through env()
        envs.env("VLLM_CPU_KVCACHE_SPACE")
    monkeypatch.setenv("RAGSERVE_LOG_LEVEL", "DEBUG")
    assert envs.env("RAGSERVE_LOG_LEVEL") == "DEBUG"
    monkeypatch.delenv("RAGSERVE_LOG_LEVEL")
    assert envs.env("RAGSERVE_LOG_LEVEL", "INFO") == "INFO"
    assert all(name.startswith("RAGSERVE_") for name in envs.declared("read"))


def test_replica_env_passes_on_only_declared_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGSERVE_MILVUS_TOKEN", "root:secret")
    monkeypatch.setenv("RAGSERVE_NOT_DECLARED", "x")
    plain, passed = envs.replica_env(), envs.replica_env(passthrough=True)
    assert "RAGSERVE_MILVUS_TOKEN" not in plain
    assert passed["RAGSERVE_MILVUS_TOKEN"] == "root:secret"
    assert "RAGSERVE_NOT_DECLARED" not in passed
    assert plain == {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_SERVE_LOG_TO_STDERR": "0",
                     "VLLM_CONFIGURE_LOGGING": "0"}


def test_serve_config_declares_the_registry_runtime_env() -> None:
    """The committed Serve config (what `serve run`/the RayService start) holds exactly the
    declared replica environment and setup hook."""
    app = yaml.safe_load((REPO / "cluster" / "serve_config.yaml").read_text())["applications"][0]
    assert app["runtime_env"] == envs.runtime_env()


def test_prepare_local_ray_sets_node_defaults_and_an_operator_value_wins(monkeypatch) -> None:
    driver = {v.name: v.value for v in envs.VARS if v.kind == "node"}
    assert driver.get("RAY_gcs_server_port_wait_time_s") == "120"
    for name in driver:  # set, then unset: the fixture restores the original state after the test
        monkeypatch.setenv(name, "unset")
        monkeypatch.delenv(name)
    envs.prepare_local_ray()
    assert {name: os.environ[name] for name in driver} == driver
    monkeypatch.setenv("RAY_gcs_server_port_wait_time_s", "7")
    envs.prepare_local_ray()
    assert os.environ["RAY_gcs_server_port_wait_time_s"] == "7"
    assert envs.node_env()["RAY_gcs_server_port_wait_time_s"] == "7"  # what nodes and pods get, too


def test_node_ray_serve_variables_are_names_ray_serve_reads() -> None:
    """A misspelt Ray setting is silently ignored: every ``node`` variable of Ray Serve's is one its
    constants module reads (checked in its source, without importing Ray)."""
    import importlib.util

    spec = importlib.util.find_spec("ray")
    if spec is None or spec.origin is None:
        pytest.skip("ray is not installed")
    source = (Path(spec.origin).parent / "serve" / "_private" / "constants.py").read_text()
    serve_vars = [n for n in envs.declared("node") if n.startswith("RAY_SERVE_")]
    assert "RAY_SERVE_USE_GRPC_BY_DEFAULT" in serve_vars
    for name in serve_vars:
        assert f'"{name}"' in source, name
