"""The app is built from the stage registry: a stage added by one entry is deployed, handed to
the ingress and checked by /readyz (its RayService sizing and dashboard row: tests/unit/test_render.py)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from pydantic import BaseModel, Field
from ray.serve._private.build_app import build_app as serve_build

from deployments import stages
from deployments.app import build_app
from deployments.config import AppConfig, DeploymentOptions, parse_app_config
from deployments.ingress.pipeline import Pipeline

TOY = stages.Stage("toy", "toy", "deployments.preprocess.deployment:Preprocessor", ready_call="ping")


class ToyConfig(BaseModel):
    deployment: DeploymentOptions = Field(default_factory=DeploymentOptions)


class ToyAppConfig(AppConfig):
    toy: ToyConfig = Field(default_factory=ToyConfig)


def deployed(cfg: AppConfig, registry: tuple[stages.Stage, ...]) -> dict[str, object]:
    built = serve_build(build_app(cfg, registry), name="ragserve")
    return {d.name: d for d in built.deployments}


def test_every_enabled_stage_of_the_registry_is_deployed() -> None:
    names = set(deployed(AppConfig(), stages.STAGES))
    assert names == {"ingress", "preprocess", "encoder", "search", "generator"}  # rerank is off by default
    on = parse_app_config({"reranker": {"enabled": True}})
    assert "rerank" in deployed(on, stages.STAGES)


def test_a_toy_stage_is_one_registry_entry() -> None:
    registry = (*stages.STAGES, TOY)
    cfg = ToyAppConfig(toy=ToyConfig(deployment=DeploymentOptions(num_replicas=2, max_ongoing_requests=3)))
    apps = deployed(cfg, registry)
    assert apps["toy"].num_replicas == 2 and apps["toy"].max_ongoing_requests == 3
    ingress_args = apps["ingress"].init_args
    assert "toy" in ingress_args[0] and ingress_args[2] == registry  # the ingress gets its handle


class Ready:
    def __init__(self, result: object) -> None:
        self.result = result

    def remote(self, *args: object) -> "Ready":
        return self

    def cancel(self) -> None:
        pass

    def __await__(self):
        async def value() -> object:
            if isinstance(self.result, Exception):
                raise self.result
            return self.result
        return value().__await__()


class Handle:
    def __init__(self, method: str, result: object) -> None:
        setattr(self, method, Ready(result))


def test_readyz_checks_every_deployed_stage_of_the_registry() -> None:
    registry = (*stages.STAGES, TOY, replace(TOY, name="off", config_field="reranker", optional=True))
    handles = {s.name: Handle(s.ready_call, {"stage": s.name}) for s in registry if s.ready_call}
    handles["toy"] = Handle("ping", RuntimeError("toy is down"))
    del handles["off"]  # an optional stage that is off has no handle
    report = asyncio.run(Pipeline(handles, AppConfig(), registry).readiness())
    assert set(report) == {"preprocess", "encoder", "search", "rerank", "generator", "toy"}
    assert report["toy"].ok is False and "toy is down" in report["toy"].error
    assert report["search"].ok and report["search"].model_extra == {"stage": "search"}
