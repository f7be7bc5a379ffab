"""The ingress's FastAPI app: middleware, the one error mapping, every router, the OpenAPI document."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.errors import RagServeError
from deployments.ingress import http, openapi
from deployments.ingress.pipeline import Pipeline
from deployments.ingress.routes import ROUTERS

DESCRIPTION = (
    "Retrieval-augmented generation on Ray Serve: questions are answered from passages retrieved from "
    "Milvus (dense + BM25 hybrid) by a vLLM engine, citing them. ragserve's own routes, an OpenAI-compatible "
    "surface (chat and text completions, embeddings, models) and the document API. Every error has the "
    "shape `{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`."
)


def build_api(pipeline: Pipeline) -> FastAPI:
    """The app with every route bound to ``pipeline``'s stages."""
    from deployments import __version__

    app = FastAPI(title="ragserve", version=__version__, description=DESCRIPTION)
    app.add_middleware(http.IngressMiddleware)
    app.add_exception_handler(RagServeError, lambda request, exc: http.error_response(exc, request))
    app.add_exception_handler(StarletteHTTPException, http.http_exception_handler)
    app.add_exception_handler(RequestValidationError, http.request_validation_handler)
    for module in ROUTERS:
        app.include_router(module.router(pipeline))
    openapi.install(app)
    return app
