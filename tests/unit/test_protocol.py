"""Unit tests of ``deployments.protocol``: public request models and stage messages.

Covers: public requests forbid unknown fields and wrong types (strict, in both Python and
JSON validation, as the ingress may use either), accept an int for float sampling fields,
enforce sampling bounds; chat requests need messages and n=1; stage messages are frozen.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from deployments.protocol import (
    ChatCompletionRequest,
    EmbeddingsRequest,
    GenerateRequest,
    Hit,
    PreparedQuery,
    QueryRequest,
    RetrieveRequest,
    SamplingParams,
)

MSGS = [{"role": "user", "content": "hi"}]
#: A minimal valid body for each public request model.
VALID: dict[type[BaseModel], dict[str, Any]] = {
    RetrieveRequest: {"question": "q"},
    QueryRequest: {"question": "q"},
    GenerateRequest: {"prompt": "p"},
    ChatCompletionRequest: {"messages": MSGS},
    EmbeddingsRequest: {"input": "text"},
}
SAMPLED = [QueryRequest, GenerateRequest, ChatCompletionRequest]


def _validate(model: type[BaseModel], body: dict[str, Any], how: str) -> BaseModel:
    if how == "json":
        return model.model_validate_json(json.dumps(body))
    return model.model_validate(body)


def _loc(err: ValidationError) -> tuple:
    return err.errors()[0]["loc"]


@pytest.fixture(params=["python", "json"])
def how(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.mark.parametrize("model", list(VALID), ids=lambda m: m.__name__)
def test_minimal_bodies_are_valid(model: type[BaseModel], how: str) -> None:
    _validate(model, VALID[model], how)


@pytest.mark.parametrize("model", list(VALID), ids=lambda m: m.__name__)
def test_unknown_fields_are_rejected_by_name(model: type[BaseModel], how: str) -> None:
    with pytest.raises(ValidationError) as exc:
        _validate(model, {**VALID[model], "tpo_k": 3}, how)
    assert _loc(exc.value) == ("tpo_k",)
    assert exc.value.errors()[0]["type"] == "extra_forbidden"


@pytest.mark.parametrize(
    ("model", "field", "value"),
    [
        (RetrieveRequest, "top_k", "5"),
        (RetrieveRequest, "question", 5),
        (RetrieveRequest, "mode", "fuzzy"),
        (QueryRequest, "question", 5),
        (QueryRequest, "top_k", 2.5),
        (QueryRequest, "stream", "yes"),
        (QueryRequest, "max_tokens", "10"),
        (QueryRequest, "temperature", "0.5"),
        (QueryRequest, "temperature", True),
        (GenerateRequest, "prompt", ["p"]),
        (GenerateRequest, "stop", "END"),
        (ChatCompletionRequest, "messages", "hi"),
        (EmbeddingsRequest, "input", 5),
        (EmbeddingsRequest, "input", [1, 2]),
        (EmbeddingsRequest, "encoding_format", "base64"),
    ],
)
def test_wrong_types_are_rejected_by_name(model: type[BaseModel], field: str, value: Any, how: str) -> None:
    with pytest.raises(ValidationError) as exc:
        _validate(model, {**VALID[model], field: value}, how)
    assert _loc(exc.value)[0] == field


@pytest.mark.parametrize("model", SAMPLED, ids=lambda m: m.__name__)
def test_int_sampling_values_become_floats(model: type[BaseModel], how: str) -> None:
    req = _validate(model, {**VALID[model], "temperature": 1, "top_p": 1}, how)
    assert req.temperature == 1.0 and isinstance(req.temperature, float)
    assert isinstance(req.top_p, float)


@pytest.mark.parametrize("model", SAMPLED, ids=lambda m: m.__name__)
@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", 3), ("temperature", -0.1), ("top_p", 0), ("top_p", 1.5), ("max_tokens", 0)],
)
def test_sampling_bounds(model: type[BaseModel], field: str, value: Any, how: str) -> None:
    with pytest.raises(ValidationError) as exc:
        _validate(model, {**VALID[model], field: value}, how)
    assert _loc(exc.value) == (field,)


def test_sampling_edges_are_accepted() -> None:
    req = QueryRequest(question="q", temperature=0, top_p=1, max_tokens=1, stop=["a"] * 8)
    assert (req.temperature, req.top_p, req.max_tokens) == (0.0, 1.0, 1)
    with pytest.raises(ValidationError):
        QueryRequest(question="q", stop=["a"] * 9)


def test_chat_needs_messages_and_one_choice(how: str) -> None:
    with pytest.raises(ValidationError) as exc:
        _validate(ChatCompletionRequest, {"messages": []}, how)
    assert _loc(exc.value) == ("messages",)
    with pytest.raises(ValidationError) as exc:
        _validate(ChatCompletionRequest, {"messages": MSGS, "n": 2}, how)
    assert _loc(exc.value) == ("n",)


@pytest.mark.parametrize(
    "message", [{"role": "tool", "content": "x"}, {"role": "user"}, {"role": "user", "content": ["x"]}]
)
def test_chat_message_shape(message: dict, how: str) -> None:
    with pytest.raises(ValidationError) as exc:
        _validate(ChatCompletionRequest, {"messages": [message]}, how)
    assert _loc(exc.value)[:2] == ("messages", 0)


def test_defaults() -> None:
    req = ChatCompletionRequest.model_validate({"messages": MSGS})
    assert (req.n, req.stream, req.retrieval, req.temperature) == (1, False, True, None)
    assert EmbeddingsRequest(input=["a", "b"]).input == ["a", "b"]


def _hit() -> Hit:
    return Hit(id="c1", doc_id="d1", source="a.md", chunk_index=0, text="t", score=0.5)


def test_stage_messages_are_frozen() -> None:
    q = PreparedQuery(text="running pumps", tokens=("run", "pump"), language="en")
    with pytest.raises(ValidationError):
        q.text = "other"  # type: ignore[misc]
    hit = _hit()
    with pytest.raises(ValidationError):
        hit.score = 1.0  # type: ignore[misc]
    with pytest.raises(ValidationError):
        SamplingParams(max_tokens=1, temperature=0, top_p=1).max_tokens = 2  # type: ignore[misc]
    assert hash(q) == hash(PreparedQuery(text="running pumps", tokens=("run", "pump"), language="en"))


def test_stage_messages_forbid_unknown_fields() -> None:
    with pytest.raises(ValidationError):
        PreparedQuery(text="x", tokens=(), language="en", extra=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        PreparedQuery(text="x", tokens=(), language="fr")  # type: ignore[arg-type]


def test_lexical_text_joins_tokens_with_spaces() -> None:
    q = PreparedQuery(
        text="水泵的压力 running pumps", tokens=("水泵", "压力", "run", "pump"), language="mixed"
    )
    assert q.lexical_text == "水泵 压力 run pump"
    assert PreparedQuery(text="the", tokens=(), language="en").lexical_text == ""


def test_hit_round_trips_through_json() -> None:
    hit = _hit()
    assert Hit.model_validate_json(hit.model_dump_json()) == hit
    assert hit.title == ""
