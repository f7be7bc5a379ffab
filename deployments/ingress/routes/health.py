"""``/healthz`` (liveness) and ``/readyz`` (readiness of every deployed stage)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from deployments.ingress.openapi import operation
from deployments.ingress.pipeline import Pipeline
from deployments.protocol.api import Health, Readiness


def router(p: Pipeline) -> APIRouter:
    r = APIRouter(tags=["health"])

    @r.get("/healthz", **operation(response=Health, common=False, auth=False))
    async def healthz() -> Health:
        """Liveness: the ingress answers (it calls no stage)."""
        return Health()

    readiness = operation(response=Readiness, common=False, auth=False)
    readiness["responses"][503] = {"model": Readiness, "description": "A stage is not ready (each one's error)."}

    @r.get("/readyz", **readiness)
    async def readyz() -> JSONResponse:
        """Readiness: every deployed stage answers a cheap call within 5 s (Milvus reachable, engine alive)."""
        stages = await p.readiness()
        report = Readiness(ready=all(s.ok for s in stages.values()), stages=stages)
        return JSONResponse(report.model_dump(mode="json", exclude_none=True),
                            status_code=200 if report.ready else 503)

    return r
