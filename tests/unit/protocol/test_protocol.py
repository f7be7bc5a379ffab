"""Unit tests of ``deployments.protocol``: public request models and stage messages.

Covers: public requests forbid unknown fields and wrong types (in both Python and JSON
validation, as the ingress may use either), accept an int for float sampling fields,
enforce sampling bounds; chat requests need messages and at most 4 choices; stage messages are frozen;
documents (id pattern, sizes, ISO/epoch ``created_at``), document batches, collection names, and
the typed ``filter`` of the retrieval requests (nested error locations).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from deployments.protocol.api import CollectionRequest, DocumentIn, DocumentsRequest, GenerateRequest, QueryRequest, RetrieveRequest

from deployments.protocol.openai import ChatCompletionRequest, EmbeddingsRequest

from deployments.protocol.stages import GenerationChunk, GenerationChunks, Hit, PreparedQuery, SamplingParams, TokenLogprob

from deployments.protocol.types import COLLECTION_PATTERN, DOC_ID_PATTERN, Filter

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
        (EmbeddingsRequest, "input", [1.5]),
        (EmbeddingsRequest, "encoding_format", "binary"),
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


@pytest.mark.parametrize(("model", "body", "read"), [
    (RetrieveRequest, {"question": "q", "top_k": 3.0}, lambda r: r.top_k),
    (QueryRequest, {"question": "q", "max_tokens": 8.0}, lambda r: r.max_tokens),
    (GenerateRequest, {"prompt": "p", "seed": 7.0}, lambda r: r.seed),
    (ChatCompletionRequest, {"messages": MSGS, "n": 2.0}, lambda r: r.n),
    (ChatCompletionRequest, {"messages": MSGS, "logit_bias": {"5": 3.0}}, lambda r: r.logit_bias["5"]),
    (RetrieveRequest, {"question": "q", "filter": {"created_after": 100.0}}, lambda r: r.filter.created_after),
    (DocumentsRequest, {"documents": [{"id": "a", "text": "t", "created_at": 100.0}]},
     lambda r: r.documents[0].created_at),
], ids=["top_k", "max_tokens", "seed", "n", "logit_bias", "filter-time", "created_at"])
def test_integral_floats_are_integers(model: type[BaseModel], body: dict, read: Any, how: str) -> None:
    # JSON Schema's "integer" (what the document declares) admits 3.0; a client keeping numbers
    # as doubles sends it.
    value = read(_validate(model, body, how))
    assert isinstance(value, int) and not isinstance(value, bool) and value == int(value)


@pytest.mark.parametrize(("model", "body", "loc"), [
    (RetrieveRequest, {"question": "q", "top_k": 3.5}, ("top_k",)),
    (RetrieveRequest, {"question": "q", "top_k": True}, ("top_k",)),
    (ChatCompletionRequest, {"messages": MSGS, "logit_bias": {"5": 0.5}}, ("logit_bias", "5")),
    (RetrieveRequest, {"question": "q", "filter": {"created_after": 1.5}}, ("filter", "created_after", "int")),
    (GenerateRequest, {"prompt": "p", "seed": 2**63}, ("seed",)),
    (ChatCompletionRequest, {"messages": MSGS, "seed": -(2**63) - 1}, ("seed",)),
], ids=["fraction", "bool", "bias-fraction", "filter-fraction", "seed-over-int64", "seed-under-int64"])
def test_non_integers_and_seeds_beyond_int64_are_refused(model: type[BaseModel], body: dict, loc: tuple,
                                                         how: str) -> None:
    with pytest.raises(ValidationError) as exc:
        _validate(model, body, how)
    assert _loc(exc.value) == loc


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


def test_chat_needs_messages_and_at_most_four_choices(how: str) -> None:
    with pytest.raises(ValidationError) as exc:
        _validate(ChatCompletionRequest, {"messages": []}, how)
    assert _loc(exc.value) == ("messages",)
    assert _validate(ChatCompletionRequest, {"messages": MSGS, "n": 4}, how).n == 4
    with pytest.raises(ValidationError) as exc:
        _validate(ChatCompletionRequest, {"messages": MSGS, "n": 5}, how)
    assert _loc(exc.value) == ("n",)


@pytest.mark.parametrize("message", [
    {"role": "robot", "content": "x"}, {"role": "user", "content": ["x"]},
    {"role": "user", "content": [{"type": "video", "video": "x"}]}, {"role": "user", "content": "x", "colour": 1},
])
def test_chat_message_shape(message: dict, how: str) -> None:
    with pytest.raises(ValidationError) as exc:
        _validate(ChatCompletionRequest, {"messages": [message]}, how)
    assert _loc(exc.value)[:2] == ("messages", 0)


def test_defaults() -> None:
    req = ChatCompletionRequest.model_validate({"messages": MSGS})
    assert (req.n, req.stream, req.retrieval, req.temperature) == (None, None, True, None)
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


# --------------------------------------------------------------------------- documents and collections
DOC = {"id": "doc-1", "text": "Some text."}


def test_document_in_defaults_and_times(how: str) -> None:
    d = _validate(DocumentIn, DOC, how)
    assert (d.id, d.text, d.title, d.source, d.tags) == ("doc-1", "Some text.", "", "", [])
    assert not d.created_at  # unknown (None or 0): consumers store 0
    with_zone = _validate(DocumentIn, {**DOC, "created_at": "2024-01-02T00:00:00+01:00"}, how)
    assert with_zone.created_at == 1_704_150_000
    assert _validate(DocumentIn, {**DOC, "created_at": 1_700_000_000}, how).created_at == 1_700_000_000
    full = {**DOC, "title": "T" * 1024, "source": "s" * 2048, "tags": ["t" * 64] * 32}
    assert _validate(DocumentIn, full, how).tags == ["t" * 64] * 32


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", "has space"), ("id", ""), ("id", "a" * 129), ("id", 5), ("id", "-x"), ("id", "a/b"),
        ("text", ""), ("text", 5), ("title", "T" * 1025), ("source", "s" * 2049), ("tags", "hr"),
        ("tags", [""]), ("tags", ["t" * 65]), ("tags", ["t"] * 33), ("tags", [1]),
        ("created_at", "yesterday"),
        ("created_at", 1.5), ("created_at", "1700000000"), ("label", "x"),
    ],
)
def test_document_in_rejects_by_name(field: str, value: Any, how: str) -> None:
    with pytest.raises(ValidationError) as exc:
        _validate(DocumentIn, {**DOC, field: value}, how)
    assert _loc(exc.value)[0] == field


def test_documents_request(how: str) -> None:
    req = _validate(DocumentsRequest, {"documents": [DOC]}, how)
    assert req.collection is None and req.documents[0].id == "doc-1"
    assert _validate(DocumentsRequest, {"collection": "kb_v2", "documents": [DOC]}, how).collection == "kb_v2"
    for body, loc in [({"documents": []}, ("documents",)), ({}, ("documents",)),
                      ({"documents": [DOC, {"id": "bad id", "text": "x"}]}, ("documents", 1, "id")),
                      ({"documents": [DOC], "collection": "bad-name"}, ("collection",)),
                      ({"documents": [DOC], "extra": 1}, ("extra",))]:
        with pytest.raises(ValidationError) as exc:
            _validate(DocumentsRequest, body, how)
        assert _loc(exc.value) == loc, body


@pytest.mark.parametrize("name", ["kb", "_private", "KB_2024", "a" * 255])
def test_collection_names_accepted(name: str, how: str) -> None:
    assert _validate(CollectionRequest, {"name": name}, how).name == name
    assert _validate(RetrieveRequest, {"question": "q", "collection": name}, how).collection == name


@pytest.mark.parametrize("name", ["", "2kb", "kb-2", "kb.v2", "kb v2", "a" * 256, "kb\n", "名字", 'kb"'])
def test_collection_names_rejected(name: str, how: str) -> None:
    with pytest.raises(ValidationError) as exc:
        _validate(CollectionRequest, {"name": name}, how)
    assert _loc(exc.value) == ("name",)
    with pytest.raises(ValidationError) as exc:
        _validate(RetrieveRequest, {"question": "q", "collection": name}, how)
    assert _loc(exc.value) == ("collection",)


def test_patterns_agree_with_validation_and_refuse_a_trailing_newline() -> None:
    # Python's re "$" also matches before a final "\n": the validators must not let one through.
    import re

    for value in ["doc-1", "a" * 128, "doc-1\n", "a" * 129, "-a"]:
        ok = re.fullmatch(DOC_ID_PATTERN, value) is not None and not value.endswith("\n")
        for build in (lambda v: DocumentIn(id=v, text="x"), lambda v: Filter(doc_ids=(v,))):
            if ok:
                build(value)
            else:
                with pytest.raises(ValidationError):
                    build(value)
    for name in ["kb_1", "kb_1\n"]:
        if name.endswith("\n"):
            with pytest.raises(ValidationError):
                CollectionRequest(name=name)
        else:
            assert re.fullmatch(COLLECTION_PATTERN, name) and CollectionRequest(name=name).name == name


@pytest.mark.parametrize(
    "model", [RetrieveRequest, QueryRequest, ChatCompletionRequest], ids=lambda m: m.__name__
)
def test_retrieval_requests_carry_a_typed_filter(model: type[BaseModel], how: str) -> None:
    body = {**VALID[model], "filter": {"doc_ids": ["d1"], "tags_any": ["hr"], "created_after": "2024-01-02"}}
    req = _validate(model, body, how)
    assert req.filter == Filter(doc_ids=("d1",), tags_any=("hr",), created_after=1_704_153_600)
    assert _validate(model, VALID[model], how).filter is None
    for bad, loc in [
        ({"expr": "live == false"}, ("filter", "expr")),
        ({"doc_ids": []}, ("filter", "doc_ids")),
        ("doc_id == 'x'", ("filter",)),
        ({"created_after": "soon"}, ("filter", "created_after")),
    ]:
        with pytest.raises(ValidationError) as exc:
            _validate(model, {**VALID[model], "filter": bad}, how)
        assert _loc(exc.value) == loc, bad


def test_a_collected_generation_is_one_chunk_per_choice_then_done() -> None:
    """What a non-streamed generation sends in its one message: each choice's deltas joined (text
    and log probabilities in order, its finish reason), by choice index, then the token counts."""
    lp = [TokenLogprob(token=t, logprob=-float(i)) for i, t in enumerate("abc")]
    deltas = [GenerationChunk(text="Hel", index=1, logprobs=(lp[0],)), GenerationChunk(text="x", index=0),
              GenerationChunk(text="lo", index=1, logprobs=(lp[1], lp[2])),
              GenerationChunk(text="", index=1, finish_reason="length"),
              GenerationChunk(text="y", index=0, finish_reason="stop"),
              GenerationChunk(done=True, prompt_tokens=7, completion_tokens=5)]
    got = GenerationChunks.collected(deltas).chunks
    assert [(c.index, c.text, c.finish_reason, c.done) for c in got] == [
        (0, "xy", "stop", False), (1, "Hello", "length", False), (0, "", None, True)]
    assert got[1].logprobs == tuple(lp) and got[0].logprobs == ()
    assert (got[2].prompt_tokens, got[2].completion_tokens) == (7, 5)


def test_a_collected_generation_without_its_end_has_no_done_chunk() -> None:
    got = GenerationChunks.collected([GenerationChunk(text="a"), GenerationChunk(text="b")]).chunks
    assert [(c.text, c.done) for c in got] == [("ab", False)]
