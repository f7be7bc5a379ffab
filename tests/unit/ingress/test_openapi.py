"""The OpenAPI document is complete: every body, response and error, and no FastAPI 422."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deployments.render import openapi as render_openapi

REPO = Path(__file__).resolve().parents[3]
DOC = render_openapi.document()
OPS = [(path, method, op) for path, ops in DOC["paths"].items() for method, op in ops.items()]
#: Routes that call no stage (their errors are their own).
NO_STAGE = {("/healthz", "get"), ("/readyz", "get"), ("/v1/models", "get"), ("/v1/models/{model}", "get")}


def refs(node: object) -> list[str]:
    if isinstance(node, dict):
        return ([node["$ref"]] if "$ref" in node else []) + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def test_every_route_is_documented() -> None:
    documented = {(p, m) for p, m, _ in OPS}
    assert {("/v1/query", "post"), ("/v1/retrieve", "post"), ("/v1/chat/completions", "post"),
            ("/v1/completions", "post"), ("/v1/embeddings", "post"), ("/v1/models", "get"),
            ("/v1/models/{model}", "get"), ("/v1/documents", "post"), ("/v1/documents/{doc_id}", "delete"),
            ("/v1/collections", "get"), ("/v1/collections", "post"), ("/v1/collections/{name}", "delete"),
            ("/healthz", "get"), ("/readyz", "get"), ("/v1/generate", "post")} == documented


@pytest.mark.parametrize(("path", "method", "op"), [o for o in OPS if o[1] == "post"], ids=lambda v: str(v)[:40])
def test_every_post_has_its_body(path: str, method: str, op: dict) -> None:
    body = op["requestBody"]
    assert body["required"] is True
    ref = body["content"]["application/json"]["schema"]["$ref"]
    schema = DOC["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert schema["type"] == "object" and schema["properties"]
    assert schema.get("additionalProperties") is False  # unknown fields are 400s, and the schema says so


@pytest.mark.parametrize(("path", "method", "op"), OPS, ids=lambda v: str(v)[:40])
def test_every_route_declares_its_errors_in_the_one_shape(path: str, method: str, op: dict) -> None:
    codes = set(op["responses"])
    assert "422" not in codes
    if (path, method) not in NO_STAGE:
        assert {"503", "504"} <= codes
        assert "Retry-After" in op["responses"]["503"]["headers"]
    if method == "post":
        assert "400" in codes and "413" in codes
    for code, resp in op["responses"].items():
        if code.startswith(("4", "5")) and path != "/readyz":
            assert resp["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse"), (path, code)
        if code.startswith("2"):
            assert "application/json" in resp["content"], (path, code)


def test_every_reference_resolves() -> None:
    names = set(DOC["components"]["schemas"])
    missing = {r for r in refs(DOC) if r.rsplit("/", 1)[1] not in names}
    assert not missing
    assert "HTTPValidationError" not in names and "ValidationError" not in names


def test_main_routes_have_examples_for_the_playground() -> None:
    for path in ("/v1/query", "/v1/chat/completions", "/v1/retrieve"):
        examples = DOC["paths"][path]["post"]["requestBody"]["content"]["application/json"]["examples"]
        assert examples and all("value" in e for e in examples.values())


def test_streamed_routes_document_their_events() -> None:
    sse = DOC["paths"]["/v1/query"]["post"]["responses"]["200"]["content"]["text/event-stream"]["schema"]
    data = sse["properties"]["data"]["anyOf"][1]
    assert data["contentMediaType"] == "application/json"
    assert {r["$ref"].rsplit("/", 1)[1] for r in data["contentSchema"]["anyOf"]} >= {"QuerySourcesEvent",
                                                                                     "QueryDoneEvent"}


def test_the_committed_document_is_current() -> None:
    rendered = render_openapi.generate(REPO)[render_openapi.OUT]
    committed = (REPO / render_openapi.OUT).read_text(encoding="utf-8")
    assert json.loads(committed) == json.loads(rendered), "docs/openapi.json is stale: run `ragserve render`"
