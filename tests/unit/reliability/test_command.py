"""The chaos drill's config (``deployments/reliability/command.py``)."""

from __future__ import annotations

from pathlib import Path

from deployments.config import load_serve_yaml, parse_app_config
from deployments.reliability.command import CHAOS_DEADLINES, CPU_DEPLOYMENTS, chaos_serve_yaml

ROOT = Path(__file__).resolve().parents[3]


def test_chaos_config_fixes_cpu_replicas_and_deadlines_and_keeps_the_rest() -> None:
    shipped = load_serve_yaml(ROOT / "cluster" / "serve_config.yaml")
    out = chaos_serve_yaml(shipped, replicas=2)
    cfg = parse_app_config(out["applications"][0]["args"])
    for name in CPU_DEPLOYMENTS:
        dep = getattr(cfg, name).deployment
        assert dep.autoscaling is None and dep.num_replicas == 2
    assert cfg.generator.deployment.autoscaling is not None  # one engine, as shipped
    assert cfg.ingress.request_timeout_s == CHAOS_DEADLINES["ingress"]["request_timeout_s"]
    assert cfg.generator.request_timeout_s == CHAOS_DEADLINES["generator"]["request_timeout_s"]
    assert cfg.generator.model == parse_app_config(shipped["applications"][0]["args"]).generator.model
    assert "autoscaling" in shipped["applications"][0]["args"]["search"]["deployment"]  # the input is not changed
