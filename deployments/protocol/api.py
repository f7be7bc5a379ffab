"""The public RAG API: request and response bodies of ragserve's own routes.

``/v1/query``, ``/v1/retrieve``, ``/v1/generate``, ``/v1/documents``, ``/v1/collections``,
``/healthz``, ``/readyz`` and the one error shape. (The OpenAI surface is
``deployments.protocol.openai``.) Request models are strict and forbid unknown fields, so a
typo is a 400 naming the field; every response is a model, never a dict literal.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from deployments.protocol.stages import Hit, Mode, PackedContext
from deployments.protocol.types import (
    MAX_GROUPS, MAX_SEED, MAX_TAGS, MIN_SEED, TIMESTAMP_SCHEMA, VISIBLE_TEXT, ChatMessage, CollectionName, DocId,
    Filter, Group, Request, StopString, Tag, epoch_seconds,
)

Condense = Literal["rewrite", "join", "last"]
MAX_HISTORY_TURNS = 64


# --------------------------------------------------------------------------- errors
class ErrorDetail(BaseModel):
    message: str = Field(description="What is wrong, naming the field when there is one.")
    type: str = Field(description="invalid_request_error, not_found_error, overloaded_error, ...")
    param: str | None = Field(None, description="The request field at fault, dotted (e.g. filter.tags_any.0).")
    code: int = Field(description="The HTTP status.")


class ErrorResponse(BaseModel):
    """The one shape of every non-2xx response (vLLM's and OpenAI's)."""

    error: ErrorDetail


# --------------------------------------------------------------------------- shared fields
class SamplingFields(Request):
    """Sampling fields shared by the public generation routes; ``None`` takes the default."""

    max_tokens: int | None = Field(None, ge=1, description="Most tokens to generate.")
    temperature: float | None = Field(None, ge=0, le=2, description="0 = greedy.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling mass.")
    stop: list[StopString] | None = Field(None, max_length=8, description="Stop strings.")
    seed: int | None = Field(None, ge=MIN_SEED, le=MAX_SEED, description="Sampling seed.")


class RetrievalFields(Request):
    """Where and how to retrieve; shared by the retrieval routes."""

    top_k: int | None = Field(None, ge=1, description="Passages to return / put in the prompt.")
    mode: Mode | None = Field(None, description="Retrieval mode (default: the server's).")
    collection: CollectionName | None = Field(None, description="Collection to search (default: the configured one).")
    filter: Filter | None = Field(None, description="Metadata conditions the passages must meet.")
    condense: Condense | None = Field(
        None, description="How a follow-up is made a search query from the conversation: rewrite (the generator "
        "writes a standalone question; join if that fails), join (recent user turns joined), last (the "
        "question alone). Default: the server's conversation.condense.")


class SearchQuery(BaseModel):
    """What was searched for a question asked in a conversation."""

    text: str = Field(description="The text that was retrieved for.")
    mode: Condense = Field(description="How it was made (join when a rewrite failed).")


class ConversationFields(RetrievalFields):
    history: list[ChatMessage] | None = Field(
        None, max_length=MAX_HISTORY_TURNS,
        description="Earlier turns of the conversation, oldest first (the question is the latest user turn).")


# --------------------------------------------------------------------------- retrieval and answers
class RetrieveRequest(ConversationFields):
    question: str = Field(description="The question.", examples=["What does error code E-4471 mean?"],
                          json_schema_extra=VISIBLE_TEXT)


class Source(BaseModel):
    """A retrieved passage as returned to clients; ``n`` is the number cited as [n]."""

    n: int
    id: str
    doc_id: str
    source: str
    title: str
    chunk_index: int
    score: float
    text: str
    tags: list[str] = []
    created_at: int = 0
    updated_at: int = 0
    version: str = ""

    @classmethod
    def numbered(cls, hits: tuple[Hit, ...]) -> list["Source"]:
        """Hits as sources ``[1]..[n]``, in rank order."""
        return [cls(n=i, **h.model_dump()) for i, h in enumerate(hits, start=1)]


#: Which encoder served a retrieval: the one field every retrieving response carries.
ENCODER_FIELD = Field("", description="The encoder (model reference) that embedded the question and the passages "
                      "searched; while a tuned encoder is rolled out, each response is served by one of the two, "
                      "never a mix (`ragserve tune rollout`).")


class RetrieveResponse(BaseModel):
    sources: list[Source]
    mode: Mode = Field(description="The retrieval mode actually used.")
    query_tokens: list[str] = Field(description="Lexical tokens of the searched text.")
    search_query: SearchQuery
    encoder: str = ENCODER_FIELD


class QueryRequest(SamplingFields, ConversationFields):
    question: str = Field(json_schema_extra=VISIBLE_TEXT, description="The question.", examples=[
        "What is the maximum water pressure of the Verdant Loop irrigation pump?"])
    stream: bool = Field(False, description="Stream server-sent events.")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> "Usage":
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens)


class QueryResponse(BaseModel):
    id: str
    answer: str
    sources: list[Source]
    cited: list[int] = Field(description="Source numbers the model cited as [n] (validated against the sources).")
    grounded_in: list[int] = Field(
        description="Source numbers the answer's sentences are drawn from, by lexical overlap (see generator.prompt)."
    )
    finish_reason: str | None
    usage: Usage
    context: PackedContext | None = Field(
        None, description="Which sources went into the prompt (the rest did not fit the model's context window).")
    search_query: SearchQuery
    encoder: str = ENCODER_FIELD


class QuerySourcesEvent(BaseModel):
    """First event of a streamed ``/v1/query`` (``event: sources``)."""

    id: str
    sources: list[Source]
    context: PackedContext | None
    search_query: SearchQuery
    encoder: str = ENCODER_FIELD


class DeltaEvent(BaseModel):
    """A piece of streamed text (a ``data:`` line without an event name)."""

    delta: str


class QueryDoneEvent(BaseModel):
    """Last event of a streamed ``/v1/query`` (``event: done``)."""

    finish_reason: str | None
    usage: Usage
    cited: list[int]
    grounded_in: list[int]


class GenerateRequest(SamplingFields):
    prompt: str = Field(json_schema_extra=VISIBLE_TEXT, description="User message sent to the model as is, no retrieval.",
                        examples=["Write one sentence about irrigation pumps."])
    system: str | None = Field(None, description="Optional system message.")
    stream: bool = False


class GenerateResponse(BaseModel):
    id: str
    text: str
    finish_reason: str | None
    usage: Usage


class GenerateDoneEvent(BaseModel):
    """Last event of a streamed ``/v1/generate`` (``event: done``)."""

    finish_reason: str | None
    usage: Usage


# --------------------------------------------------------------------------- documents
class DocumentIn(Request):
    """One document to upsert through ``POST /v1/documents``."""

    id: DocId = Field(description="Stable document id; re-sending it replaces the document.")
    text: str = Field(min_length=1, description="Full text; it is chunked by the server.")
    title: str = Field("", max_length=1024)
    source: str = Field("", max_length=2048, description="Where it came from (default: the id).")
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS)
    created_at: int | str | None = Field(None, description="ISO 8601 or epoch seconds.",
                                        json_schema_extra=TIMESTAMP_SCHEMA)
    acl: list[Group] = Field(default_factory=list, max_length=MAX_GROUPS,
                             description="Groups that may read it (API keys list their groups); empty: every key of "
                             "the tenant.")

    @field_validator("created_at")
    @classmethod
    def _time(cls, v: int | str | None) -> int:
        return epoch_seconds(v)


class DocumentsRequest(Request):
    collection: CollectionName | None = Field(None, description="Target collection (default: the configured one).")
    documents: list[DocumentIn] = Field(min_length=1, description="Documents to upsert.")


class DocumentResult(BaseModel):
    id: str
    status: Literal["added", "updated", "unchanged"]
    chunks: int


class DocumentsResponse(BaseModel):
    collection: str
    results: list[DocumentResult]


class DocumentDeleted(BaseModel):
    id: str
    collection: str
    deleted_chunks: int


class CollectionRequest(Request):
    name: CollectionName = Field(description="New collection's name.")


class CollectionInfo(BaseModel):
    name: str
    rows: int = Field(description="Stored chunk rows.")


class CollectionsResponse(BaseModel):
    collections: list[CollectionInfo]
    default: str = Field(description="The collection used when a request names none.")


class CollectionCreated(BaseModel):
    name: str
    created: bool = Field(description="False when it already existed (200 instead of 201).")


class CollectionDropped(BaseModel):
    name: str
    dropped: bool


# --------------------------------------------------------------------------- health
class Health(BaseModel):
    status: Literal["ok"] = "ok"


class StageReadiness(BaseModel):
    """One stage's readiness; the other fields are what the stage reported (model, rows, engine...)."""

    model_config = ConfigDict(extra="allow")
    ok: bool
    error: str | None = None


class Readiness(BaseModel):
    ready: bool
    stages: dict[str, StageReadiness]
