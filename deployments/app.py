"""Builds the Serve application: the only place ``.options()`` and ``.bind()`` are called.

``serve run cluster/serve_config.yaml`` (or ``serve deploy``) imports :func:`app_builder`
with the YAML's ``args``; Python callers use :func:`build_app` with an :class:`AppConfig`.
Each deployment gets only its own config slice and its own Serve options.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from deployments.config import AppConfig, parse_app_config
from deployments.encoder.deployment import Encoder
from deployments.generator.deployment import Generator
from deployments.ingress import Ingress
from deployments.preprocess.deployment import Preprocessor
from deployments.rerank.deployment import Reranker
from deployments.search.deployment import Searcher


def build_app(cfg: AppConfig) -> Application:
    """Compose preprocess → encoder → search (→ rerank) → generator behind the HTTP ingress."""
    log = {"logging_config": cfg.logging.model_dump()}
    preprocess = Preprocessor.options(**cfg.preprocess.deployment.serve_options(), **log).bind(cfg.preprocess)
    encoder = Encoder.options(**cfg.encoder.deployment.serve_options(), **log).bind(cfg.encoder)
    search = Searcher.options(**cfg.search.deployment.serve_options(), **log).bind(cfg.search)
    generator = Generator.options(**cfg.generator.deployment.serve_options(), **log).bind(cfg.generator)
    rerank = None
    if cfg.reranker.enabled:
        rerank = Reranker.options(**cfg.reranker.deployment.serve_options(), **log).bind(cfg.reranker)
    return Ingress.options(**cfg.ingress.deployment.serve_options(), **log).bind(
        preprocess, encoder, search, generator, cfg, rerank
    )


def app_builder(args: dict[str, Any]) -> Application:
    """Serve's application builder: validates ``args`` (errors name the field) and builds."""
    return build_app(parse_app_config(args))
