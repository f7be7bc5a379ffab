"""The live app against its own OpenAPI document, fuzzed by schemathesis.

Every operation of the served ``/openapi.json`` gets generated requests, valid and invalid: no
5xx, no hang, status codes, headers, content types and bodies as the document declares them
(so every error is in the one shape). The served document is also the committed one.

Generated requests are confined, not weakened: writes and searches go to a ``fuzz`` collection
(the shared sample collection stays intact for the other tests), and completion lengths are
clamped so that a generated ``max_tokens: 1000`` costs seconds, not minutes, on a CPU.
``RAGSERVE_FUZZ_EXAMPLES`` sets examples per operation (default 12; the long run uses more).
"""

from __future__ import annotations

import json
import os

import httpx
import pytest

pytestmark = pytest.mark.integration
schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

FUZZ = "fuzz"
EXAMPLES = int(os.environ.get("RAGSERVE_FUZZ_EXAMPLES", "12"))
#: Generation lengths and fan-out kept small: each token costs ~0.1 s on a 2-core CPU.
CLAMPS = {"max_tokens": 4, "max_completion_tokens": 4, "n": 2, "top_logprobs": 2}


@pytest.fixture(scope="module")
def served_document(stack) -> dict:
    return httpx.get(f"{stack.url}/openapi.json", timeout=30).json()


@pytest.fixture(scope="module")
def api_schema(served_document: dict):
    return schemathesis.openapi.from_dict(served_document)


schema = schemathesis.pytest.from_fixture("api_schema")


def confine(case) -> None:
    """Keep a generated request inside the fuzz collection and cheap to answer."""
    if isinstance(case.body, dict):
        for key, limit in CLAMPS.items():
            if isinstance(case.body.get(key), int) and not isinstance(case.body[key], bool):
                case.body[key] = min(case.body[key], limit)
        if "collection" in case.body or case.path in ("/v1/retrieve", "/v1/query", "/v1/documents"):
            case.body["collection"] = FUZZ
        if case.path == "/v1/chat/completions" and isinstance(case.body.get("messages"), list):
            case.body["collection"] = FUZZ
            case.body["condense"] = "join"  # a rewrite is one more generation per example
        if case.path == "/v1/completions" and isinstance(case.body.get("prompt"), list):
            case.body["prompt"] = case.body["prompt"][:2]
        if case.path == "/v1/collections":
            case.body["name"] = FUZZ
    if case.path_parameters and "name" in case.path_parameters:
        case.path_parameters["name"] = f"{FUZZ}_gone"
    if case.path.startswith("/v1/documents/") and isinstance(case.query, dict):
        case.query["collection"] = FUZZ


@pytest.fixture(scope="module", autouse=True)
def fuzz_collection(stack):
    stack.client.post("/v1/collections", json={"name": FUZZ})
    yield
    stack.client.delete(f"/v1/collections/{FUZZ}")


@schema.parametrize()
@hypothesis.settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                     suppress_health_check=list(hypothesis.HealthCheck))
def test_every_operation_conforms_to_the_document(case, stack) -> None:
    confine(case)
    case.call_and_validate(base_url=stack.url, timeout=120)


def test_the_served_document_is_the_committed_one(served_document: dict) -> None:
    from deployments.render import openapi as render_openapi

    served = dict(served_document, info={k: v for k, v in served_document["info"].items() if k != "version"})
    committed = json.loads(render_openapi.generate(None)[render_openapi.OUT])
    assert served == committed
