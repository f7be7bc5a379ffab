"""The ingress deployment: the HTTP front door, holding only stage handles and the config.

Its FastAPI app is built on each replica (``__serve_build_asgi_app__``) from the routers in
``deployments/ingress/routes/``, bound to a :class:`~deployments.ingress.pipeline.Pipeline`
over the handles of every deployed stage (by registry name, ``deployments.stages``).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray import serve

from deployments import stages
from deployments.config import AppConfig
from deployments.ingress.api import build_api
from deployments.ingress.pipeline import Pipeline


@serve.deployment(name="ingress")
@serve.ingress()
class Ingress:
    """Composes the stages behind one HTTP ingress.

    Args:
        handles: a DeploymentHandle per deployed stage, by registry name.
        cfg: the application config.
        registry: the stage registry the app was built from.
    """

    def __init__(self, handles: dict[str, Any], cfg: AppConfig,
                 registry: tuple[stages.Stage, ...] = stages.STAGES) -> None:
        self.pipeline = Pipeline(handles, cfg, registry)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_api(self.pipeline)

    def retrieval_cache_stats(self) -> dict[str, int] | None:
        """This replica's retrieval cache: lookups by result, entries and bytes (None: cache off).
        The same numbers are Ray metrics (``rag_retrieval_cache_*``); this answers at once."""
        return self.pipeline.cache.stats() if self.pipeline.cache is not None else None
