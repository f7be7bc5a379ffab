"""The stage registry: the one list of ragserve's deployments.

Everything that needs to know which stages exist iterates :data:`STAGES`: the app builder
(``deployments.app``), ``/readyz``, the k8s worker-group sizing, the local cluster's placement,
the monitoring rules and dashboard, and the tests. Adding a stage is one :class:`Stage` entry
plus its own package (its config slice on :class:`~deployments.config.AppConfig` and its
deployment class).

Deployment classes are named by import path, not imported, so this module stays importable
without Ray Serve's heavy imports and without import cycles (the ingress imports it too).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Literal

#: Worker types of a multi-node cluster: CPU pods/nodes and generator (GPU) pods/nodes.
NodeType = Literal["cpu", "generator"]


@dataclass(frozen=True)
class Stage:
    """One Serve deployment of the application.

    Attributes:
        name: the deployment name, also the ``stage`` label of the stage metrics.
        config_field: the :class:`AppConfig` attribute holding the stage's config slice (its
            ``deployment`` field has the Serve options).
        deployment: ``module:Class`` of the Serve deployment.
        node_type: the worker type it runs on (k8s worker group, local-cluster node type).
        optional: deployed only when its config slice has ``enabled: true``.
        ready_call: the cheap method ``/readyz`` calls (``None``: the stage is not checked, e.g.
            the ingress, which is answering the check itself).
        ready_arg: the argument of ``ready_call``, if it takes one.
        p99_alert_s: the p99 latency alert threshold, about 10-20x the p50 measured on 2 CPU
            cores, on a bucket bound of ``metrics.LATENCY_BUCKETS`` (so the quantile is exact there).
    """

    name: str
    config_field: str
    deployment: str
    node_type: NodeType = "cpu"
    optional: bool = False
    ready_call: str | None = "ready"
    ready_arg: Any = None
    p99_alert_s: float = 0.25

    def config(self, cfg: Any) -> Any:
        """This stage's config slice of an :class:`AppConfig`."""
        return getattr(cfg, self.config_field)

    def enabled(self, cfg: Any) -> bool:
        """Whether the stage is deployed under ``cfg`` (optional stages need ``enabled: true``)."""
        return not self.optional or bool(getattr(self.config(cfg), "enabled", False))

    def deployment_class(self) -> Any:
        """The Serve deployment (imported on demand)."""
        module, _, attr = self.deployment.partition(":")
        return getattr(importlib.import_module(module), attr)


#: The ingress: the HTTP front door composing the stages below (not a `stage` metric label).
INGRESS = Stage("ingress", "ingress", "deployments.ingress.deployment:Ingress", ready_call=None)

#: The stages in request order. The generator is the only one that may ask for GPUs.
STAGES: tuple[Stage, ...] = (
    Stage("preprocess", "preprocess", "deployments.preprocess.deployment:Preprocessor", ready_call="preprocess",
          ready_arg="ready", p99_alert_s=0.05),
    Stage("encoder", "encoder", "deployments.encoder.deployment:Encoder", ready_call="info"),
    Stage("search", "search", "deployments.search.deployment:Searcher"),
    Stage("rerank", "reranker", "deployments.rerank.deployment:Reranker", optional=True, ready_call="ready"),
    # Generation time grows with max_tokens, hence 10 s.
    Stage("generator", "generator", "deployments.generator.deployment:Generator", node_type="generator",
          p99_alert_s=10.0),
)

#: Every deployment of the application: the stages and the ingress.
DEPLOYMENTS: tuple[Stage, ...] = (*STAGES, INGRESS)


def by_name(name: str, stages: tuple[Stage, ...] = DEPLOYMENTS) -> Stage:
    """The registry entry of a deployment name (KeyError naming the known ones)."""
    for s in stages:
        if s.name == name:
            return s
    raise KeyError(f"unknown stage {name!r}; known: {[s.name for s in stages]}")


def enabled(cfg: Any, stages: tuple[Stage, ...] = DEPLOYMENTS) -> tuple[Stage, ...]:
    """The entries deployed under ``cfg``, in registry order."""
    return tuple(s for s in stages if s.enabled(cfg))
