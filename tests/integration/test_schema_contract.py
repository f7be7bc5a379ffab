"""The live app against its own OpenAPI document, fuzzed by schemathesis.

Every operation of the committed ``docs/openapi.json`` gets generated requests, valid and
invalid: no 5xx, no hang, status codes, headers, content types and bodies as the document
declares them (so every error is in the one shape). The served document is checked to be the
committed one, so fuzzing the committed file is fuzzing what the app serves (and the operations
are known at collection time, with no lazily loaded schema).

The fuzzed app is a keyed ingress over the running stages, with a key of every scope of its own
tenant (schemathesis also sends each operation without the key and expects the 401). Generated
requests are confined, not weakened: writes and searches go to the tenant's ``fuzz`` collection
(the shared sample collection stays intact for the other tests), and completion lengths are
clamped so that a generated ``max_tokens: 1000`` costs seconds, not minutes, on a CPU.
``RAGSERVE_FUZZ_EXAMPLES`` sets examples per operation (default 12); ``RAGSERVE_FUZZ_COVERAGE=1``
adds schemathesis's coverage phase, every boundary case the document defines (hundreds of
generations per generating route: the long run, not CI's).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from deployments.ingress.auth import KeyEntry, hash_key, new_key
from deployments.protocol.types import COLLECTION_PATTERN

pytestmark = pytest.mark.integration
schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

FUZZ = "fuzz"
#: The keyed ingress fuzzed (under ``/fuzzed``).
APP = "fuzzed"
EXAMPLES = int(os.environ.get("RAGSERVE_FUZZ_EXAMPLES", "12"))
COVERAGE = os.environ.get("RAGSERVE_FUZZ_COVERAGE") == "1"
#: Routes that generate (unless streamed or not, they all take max_tokens).
GENERATING = ("/v1/query", "/v1/generate", "/v1/chat/completions", "/v1/completions")
#: Generation lengths and fan-out kept small: each token costs ~0.1 s on a 2-core CPU.
CLAMPS = {"max_tokens": 4, "max_completion_tokens": 4, "n": 2, "top_logprobs": 2, "top_k": 3}


@pytest.fixture(scope="module")
def served_document(stack) -> dict:
    return httpx.get(f"{stack.url}/openapi.json", timeout=30).json()


DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
#: A request over ``ingress.max_body_bytes`` is refused whole with 413 (before it is parsed), a
#: rejection as proper as a 400: e.g. a generated ``history`` of thousands of turns.
REJECTIONS = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
#: The fuzzed tenant's key, made here so that schemathesis knows it as the document's bearer scheme
#: (it sends it, and checks that each operation refuses a request without it).
KEY, KEY_ID = new_key()
schema = schemathesis.openapi.from_path(str(DOCUMENT), config=schemathesis.Config.from_dict({
    "auth": {"openapi": {"HTTPBearer": {"bearer": KEY}}},
    "checks": {"negative_data_rejection": {"expected-statuses": REJECTIONS}},
    "phases": {"coverage": {"enabled": COVERAGE}}}))


def confine(case) -> None:
    """Keep a generated request inside the fuzz collection and cheap to answer.

    Only values of the right type are replaced, and a missing ``name`` is left missing, so a
    negative case (a wrong type, a required field removed) stays negative."""
    if isinstance(case.body, dict) and case.meta is not None and case.meta.generation.mode.is_positive:
        # Rules between fields that the document states in words, not in its schema (each is a
        # 400 naming the field, tested in tests/integration/test_bad_input.py and the OpenAI
        # client tests), kept out of positive cases: a chat's last message is the user's question,
        # top_logprobs needs logprobs: true, and best_of equals n.
        if integral(case.body.get("top_logprobs")):
            case.body["logprobs"] = True
        msgs = case.body.get("messages")
        if case.path == "/v1/chat/completions" and isinstance(msgs, list) and not (
                msgs and isinstance(msgs[-1], dict) and msgs[-1].get("role") == "user"
                and isinstance(msgs[-1].get("content"), str) and msgs[-1]["content"].strip()):
            msgs.append({"role": "user", "content": "What does error code E-4471 mean?"})
    if isinstance(case.body, dict):
        for key, limit in CLAMPS.items():
            value = case.body.get(key)
            if integral(value) and value <= maximum(case.path, key):
                case.body[key] = min(int(value), limit)  # above the declared maximum it must stay a 400
        if integral(case.body.get("best_of")) and case.meta is not None and case.meta.generation.mode.is_positive:
            case.body["best_of"] = case.body["n"] if integral(case.body.get("n")) else 1  # n as clamped
        if case.path in GENERATING and not any(k in case.body for k in ("max_tokens", "max_completion_tokens")):
            case.body["max_tokens"] = CLAMPS["max_tokens"]  # not the server's default 128 tokens
        if case.path == "/v1/embeddings":
            # The served dimension is the encoder's (a runtime fact the static document cannot
            # state): any other is a 400, tested in tests/integration/test_openai_clients.py.
            case.body.pop("dimensions", None)
        if valid_name(case.body.get("collection", ABSENT)) and (
                "collection" in case.body or case.path in ("/v1/retrieve", "/v1/query", "/v1/documents",
                                                         "/v1/chat/completions")):
            case.body["collection"] = FUZZ
        if case.path == "/v1/chat/completions" and case.body.get("condense") in (None, "rewrite"):
            case.body["condense"] = "join"  # a rewrite is one more generation per example
        if case.path == "/v1/completions" and isinstance(case.body.get("prompt"), list):
            case.body["prompt"] = case.body["prompt"][:2]
        if case.path == "/v1/collections" and valid_name(case.body.get("name")):
            case.body["name"] = FUZZ
    if case.path_parameters and valid_name(case.path_parameters.get("name")):
        case.path_parameters["name"] = f"{FUZZ}_gone"
    if case.path.startswith("/v1/documents/") and isinstance(case.query, dict) and valid_name(
            case.query.get("collection", ABSENT)):
        case.query["collection"] = FUZZ


def maximum(path: str, key: str) -> float:
    """The ``maximum`` the document declares for a body field of the POST at ``path``."""
    doc = json.loads(DOCUMENT.read_text(encoding="utf-8"))
    ref = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    prop = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"].get(key, {})
    found = [s["maximum"] for s in [prop, *prop.get("anyOf", [])] if "maximum" in s]
    return min(found) if found else float("inf")


def integral(value: object) -> bool:
    """Whether a JSON value is an integer as JSON Schema counts them (2 and 2.0, not true)."""
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, float) and value.is_integer())


#: A field the generated request does not have.
ABSENT = object()


def valid_name(value: object) -> bool:
    """Whether a collection name is absent or one a negative case did not break."""
    return value is ABSENT or (isinstance(value, str) and re.fullmatch(COLLECTION_PATTERN, value) is not None)


@dataclass(frozen=True)
class Fuzzed:
    url: str
    key: str


@pytest.fixture(scope="module")
def fuzzed(stack, keyed_ingress) -> Iterator[Fuzzed]:
    """A keyed ingress (the document declares bearer keys; an open loopback server does not check
    them) with one key of every scope, of its own tenant: whatever the fuzz writes stays there."""
    keyed_ingress(APP, [KeyEntry(id=KEY_ID, hash=hash_key(KEY), tenant="fuzz", scopes=("query", "write", "admin"))])
    f = Fuzzed(f"{stack.url}/{APP}", KEY)
    headers = {"authorization": f"Bearer {KEY}"}
    httpx.post(f"{f.url}/v1/collections", json={"name": FUZZ}, headers=headers, timeout=60)
    yield f
    httpx.delete(f"{f.url}/v1/collections/{FUZZ}", headers=headers, timeout=60)


@schema.parametrize()
@hypothesis.settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                     suppress_health_check=list(hypothesis.HealthCheck),
                     # No shrinking: each example can cost a generation (seconds on a CPU), and the
                     # failure report already shows the request (with a curl line to reproduce it).
                     phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate])
def test_every_operation_conforms_to_the_document(case, fuzzed: Fuzzed) -> None:
    confine(case)
    case.call_and_validate(base_url=fuzzed.url, timeout=120)


def test_the_served_document_is_the_committed_one(served_document: dict) -> None:
    from deployments.render import openapi as render_openapi

    served = dict(served_document, info={k: v for k, v in served_document["info"].items() if k != "version"})
    committed = json.loads(render_openapi.generate(None)[render_openapi.OUT])
    assert served == committed
