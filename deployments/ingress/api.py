"""The ingress's FastAPI app: middleware, the one error mapping, every router, the OpenAPI document."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.errors import RagServeError
from deployments.ingress import http, openapi
from deployments.ingress.pipeline import Pipeline
from deployments.ingress.routes import ROUTERS

#: Routes whose first step is a retrieval: refused before any work when the retrieval admission
#: would refuse them (``http.SheddingMiddleware``).
SHED_PATHS = ("/v1/retrieve", "/v1/query")
#: Of those, the routes whose whole latency is one retrieval: the proxy's gate sheds them too.
PROXY_SHED_PATHS = frozenset({"/v1/retrieve"})

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
    app.add_exception_handler(RagServeError, lambda request, exc: http.error_response(exc, request))
    app.add_exception_handler(StarletteHTTPException, http.http_exception_handler)
    app.add_exception_handler(RequestValidationError, http.request_validation_handler)
    for module in ROUTERS:
        app.include_router(module.router(pipeline))
    # The last added is the outermost: the request id and metrics see every refusal too. Before
    # all of these, Serve's proxy runs its own (gate.proxy_middlewares: repeats of a key just refused
    # for its rate, and retrievals past the budget this app announces to it: gate.py).
    shed = {r.path: r for r in app.router.routes if getattr(r, "path", None) in SHED_PATHS}
    app.add_middleware(http.SheddingMiddleware, admission=pipeline.admission, routes=shed,
                       announced=PROXY_SHED_PATHS)
    app.add_middleware(http.IngressMiddleware)
    openapi.install(app)
    return app
