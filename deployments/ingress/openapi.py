"""The OpenAPI document: every operation's body, success response and errors.

The ingress reads request bodies itself (``http.read_json``: the size limit before parsing,
non-UTF-8 and malformed JSON, the one error shape), so FastAPI never sees the body models and
would document no request body at all. Each route therefore declares itself with
:func:`operation` — its body model, response model, and the error statuses it can return — and
:func:`install` completes FastAPI's document with the body schemas, and removes FastAPI's
default 422 (the app answers 400 in its own shape instead).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from deployments.protocol.api import ErrorResponse

#: Why each error status is sent (the descriptions in the document).
ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Invalid request: the message and `param` name the field.",
    401: "Missing or unknown API key.",
    403: "The key may not use this route or resource.",
    404: "A named resource (collection, document, model) does not exist.",
    409: "Conflicts with stored state (e.g. a collection of another schema).",
    413: "The body or a field is larger than allowed.",
    429: "Over the key's rate limit or quota; retry after `Retry-After` seconds.",
    503: "A stage is unavailable or overloaded; retry after `Retry-After` seconds when sent.",
    504: "A stage did not answer within its deadline.",
}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}
#: Errors every route that calls a stage can return: the stage may be down or past its deadline.
COMMON_ERRORS = (503, 504)
#: Errors of every route behind an API key: no or unknown key, missing scope, over its limits.
AUTH_ERRORS = (401, 403, 429)
SSE = "text/event-stream"


def operation(*, body: type[BaseModel] | None = None, response: type[BaseModel] | None = None,
              errors: Sequence[int] = (), stream: str | None = None, events: Sequence[type[BaseModel]] = (),
              status: int = 200, examples: dict[str, Any] | None = None, common: bool = True,
              auth: bool = True) -> dict[str, Any]:
    """Keyword arguments for a route decorator that document the route completely.

    Args:
        body: the JSON body model (read by the route with ``http.read_json``).
        response: the success response model.
        errors: error statuses the route can return besides :data:`COMMON_ERRORS`.
        stream: with ``stream`` true in the body, what the server-sent events carry.
        events: the models of those events' ``data`` (documented as components).
        status: the success status.
        examples: named request examples shown in ``/docs``.
        common: include :data:`COMMON_ERRORS` (false for routes that call no stage).
        auth: include :data:`AUTH_ERRORS` (false for routes open to everyone: health).
    """
    responses: dict[int | str, Any] = {}
    for code in sorted({*(COMMON_ERRORS if common else ()), *(AUTH_ERRORS if auth else ()), *errors}):
        entry: dict[str, Any] = {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS[code]}
        if code in (429, 503):
            entry["headers"] = RETRY_AFTER
        responses[code] = entry
    if stream:
        refs = [{"$ref": f"#/components/schemas/{m.__name__}"} for m in events]
        responses[status] = {"description": f"JSON, or with `stream: true` server-sent events: {stream}",
                             "content": {SSE: {"schema": sse_event(refs)}}}
        _MODELS.update({m.__name__: m for m in events})
    extra: dict[str, Any] = {}
    if body is not None:
        media: dict[str, Any] = {"schema": {"$ref": f"#/components/schemas/{body.__name__}"}}
        if examples:
            media["examples"] = {k: {"value": v} for k, v in examples.items()}
        extra = {"requestBody": {"required": True, "content": {"application/json": media}},
                 "x-body-model": body.__name__}
        _MODELS[body.__name__] = body
    return {"response_model": response, "status_code": status, "responses": responses, "openapi_extra": extra}


def sse_event(refs: list[dict[str, str]]) -> dict[str, Any]:
    """One server-sent event, as OpenAPI before 3.2 describes a stream (the schema of each event):
    an optional ``event`` name and ``data`` holding JSON of one of ``refs`` (or the OpenAI
    stream's closing ``[DONE]``)."""
    return {"type": "object", "required": ["data"], "properties": {
        "event": {"type": "string"},
        "data": {"anyOf": [{"const": "[DONE]"},
                           {"type": "string", "contentMediaType": "application/json",
                            "contentSchema": {"anyOf": refs}}]}}}


#: Models the document references that FastAPI does not know of: request bodies and event payloads.
_MODELS: dict[str, type[BaseModel]] = {}


def install(app: FastAPI) -> None:
    """Replace ``app.openapi`` with the completed document (built once, then cached)."""
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete(get_openapi(title=app.title, version=app.version,
                                                      description=app.description, routes=app.routes))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def complete(doc: dict[str, Any]) -> dict[str, Any]:
    """Add the body and event models' schemas, drop FastAPI's 422s and the schemas only they used."""
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    for path in doc.get("paths", {}).values():
        for op in path.values():
            op.get("responses", {}).pop("422", None)
            op.pop("x-body-model", None)
    for name, model in _MODELS.items():
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for def_name, definition in schema.pop("$defs", {}).items():
            components.setdefault(def_name, definition)
        components[name] = schema
    for unused in ("HTTPValidationError", "ValidationError"):
        if not _referenced(doc, unused):
            components.pop(unused, None)
    return doc


def _referenced(doc: dict[str, Any], name: str) -> bool:
    import json

    return f'"#/components/schemas/{name}"' in json.dumps(doc.get("paths", {})) + json.dumps(
        {k: v for k, v in doc["components"]["schemas"].items() if k != name})
