"""Builds the Serve application: the only place ``.options()`` and ``.bind()`` are called.

``serve run cluster/serve_config.yaml`` (or ``serve deploy``) imports :func:`app_builder`
with the YAML's ``args``; Python callers use :func:`build_app` with an :class:`AppConfig`.
Every deployment comes from the stage registry (``deployments.stages``) and gets only its own
config slice and its own Serve options.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from deployments import stages
from deployments.config import AppConfig, parse_app_config


def build_app(cfg: AppConfig, registry: tuple[stages.Stage, ...] = stages.STAGES) -> Application:
    """Every enabled stage of ``registry``, composed behind the HTTP ingress."""
    log = {"logging_config": cfg.logging.model_dump()}

    def bind(stage: stages.Stage, *args: Any) -> Application:
        opts = stage.config(cfg).deployment.serve_options()
        return stage.deployment_class().options(name=stage.name, **opts, **log).bind(*args)

    handles = {s.name: bind(s, s.config(cfg)) for s in stages.enabled(cfg, registry)}
    return bind(stages.INGRESS, handles, cfg, registry)


def app_builder(args: dict[str, Any]) -> Application:
    """Serve's application builder: validates ``args`` (errors name the field) and builds."""
    return build_app(parse_app_config(args))
