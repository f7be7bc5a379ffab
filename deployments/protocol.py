"""Typed messages: between stages (frozen) and on the public HTTP API.

Stage messages cross Ray process boundaries, so they are small frozen pydantic models rather
than dicts. Public request models forbid unknown fields so a typo is a 400 naming the field.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timezone
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

#: Document ids: safe in a URL path and in a Milvus string literal, at most 128 characters.
DOC_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
#: Collection names as Milvus allows them.
COLLECTION_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,254}$"
DocId = Annotated[str, StringConstraints(pattern=DOC_ID_PATTERN)]
CollectionName = Annotated[str, StringConstraints(pattern=COLLECTION_PATTERN)]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MAX_TAGS = 32


def epoch_seconds(value: int | str | None) -> int:
    """An ISO 8601 date/datetime (UTC when no zone is given) or epoch seconds, as epoch seconds."""
    if value is None:
        return 0
    if isinstance(value, int):
        if not -(2**62) < value < 2**62:  # Milvus stores INT64
            raise ValueError(f"timestamp {value} is out of range")
        return value
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            dt = datetime.combine(date.fromisoformat(value), datetime.min.time())
        else:
            dt = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"not an ISO 8601 date or datetime: {value!r}") from None
    return int((dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp())


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Req(BaseModel):
    # strict: "5" is not an int and 1 is not a string, so wrong types are 400s, not guesses.
    model_config = ConfigDict(extra="forbid", strict=True)


# --------------------------------------------------------------------------- stage messages
class PreparedQuery(_Msg):
    """Output of preprocess: the text for the encoder and the tokens for lexical search."""

    text: str = Field(description="Unicode-normalised question, whitespace collapsed.")
    tokens: tuple[str, ...] = Field(description="Lexical tokens: segmented, stopwords removed, stemmed.")
    language: Literal["en", "zh", "mixed"] = Field(description="Dominant script of the question.")

    @property
    def lexical_text(self) -> str:
        """Tokens joined by spaces: what the BM25 side of the index was built on."""
        return " ".join(self.tokens)


class Filter(BaseModel):
    """Metadata filter of a retrieval request: every given condition must hold.

    A typed structure, never an expression: the search stage compiles it into a Milvus
    expression with every value quoted (``deployments.search.filters``), so request text can
    never become expression syntax.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    doc_ids: tuple[DocId, ...] | None = Field(None, min_length=1, max_length=256, description="Only these documents.")
    sources: tuple[Annotated[str, StringConstraints(min_length=1, max_length=2048)], ...] | None = Field(
        None, min_length=1, max_length=256, description="Only documents with exactly these sources.")
    source_prefix: str | None = Field(None, min_length=1, max_length=2048, description="Sources starting with this.")
    tags_any: tuple[Tag, ...] | None = Field(None, min_length=1, max_length=MAX_TAGS, description="At least one tag.")
    tags_all: tuple[Tag, ...] | None = Field(None, min_length=1, max_length=MAX_TAGS, description="Every tag.")
    created_after: int | str | None = Field(None, description="created_at >= this (ISO 8601 or epoch seconds).")
    created_before: int | str | None = Field(None, description="created_at < this.")
    updated_after: int | str | None = Field(None, description="Ingested (this version) at or after this.")
    updated_before: int | str | None = Field(None, description="Ingested before this.")

    @field_validator("created_after", "created_before", "updated_after", "updated_before")
    @classmethod
    def _time(cls, v: int | str | None) -> int | None:
        return None if v is None else epoch_seconds(v)

    @field_validator("doc_ids", "sources", "tags_any", "tags_all", mode="before")
    @classmethod
    def _list(cls, v: object) -> object:
        return tuple(v) if isinstance(v, list) else v  # JSON arrays arrive as lists


class SearchRequest(_Msg):
    """What the search stage needs: the prepared query, its vector and knobs."""

    query: PreparedQuery
    vector: tuple[float, ...]
    top_k: int
    mode: Literal["hybrid", "dense", "lexical"] | None = None
    collection: str | None = None
    filter: Filter | None = None


class Hit(_Msg):
    """One retrieved chunk."""

    id: str = Field(description="Stable chunk id.")
    doc_id: str = Field(description="Document the chunk belongs to.")
    source: str = Field(description="Where the document came from (path or URL).")
    title: str = Field("", description="Document title, if known.")
    chunk_index: int = Field(description="Position of the chunk in its document.")
    text: str = Field(description="Chunk text.")
    score: float = Field(description="Fused relevance score (higher is better).")
    tags: tuple[str, ...] = Field((), description="Document tags.")
    created_at: int = Field(0, description="Document creation time, epoch seconds (0: unknown).")
    updated_at: int = Field(0, description="When this version of the document was ingested, epoch seconds.")
    version: str = Field("", description="Hash of the document version the chunk belongs to.")


class SearchResult(_Msg):
    hits: tuple[Hit, ...]
    mode: Literal["hybrid", "dense", "lexical"]


class SamplingParams(_Msg):
    """Validated sampling parameters handed to the generator."""

    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...] = ()
    seed: int | None = None
    max_tokens_is_default: bool = Field(
        False, description="max_tokens is the server's default, not the caller's: the generator may lower it "
        "to fit the prompt into the context instead of rejecting the request.")


class ChatMessage(BaseModel):
    """An OpenAI chat message (only text content)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=200_000)


class RagPrompt(_Msg):
    """A retrieval-augmented prompt, packed into the context window by the generator (which owns
    the tokenizer): the passages are budgeted in the model's own tokens."""

    system_prompt: str = Field(description="ragserve's grounding instructions.")
    question: str = Field(description="The user's question (the last user turn of a chat).")
    hits: tuple[Hit, ...] = Field(description="Retrieved passages, best first; they become sources [1]..[n].")
    history: tuple[ChatMessage, ...] = Field((), description="Earlier chat turns, client system messages included.")
    passage_chars: int = Field(description="Longest passage text put in the prompt, in characters.")


class GenerationRequest(_Msg):
    """Prompt for the generator: chat messages as given, or a :class:`RagPrompt` to pack (one of
    the two). Both are templated by the engine's tokenizer."""

    messages: tuple[ChatMessage, ...] = ()
    rag: RagPrompt | None = None
    sampling: SamplingParams
    request_id: str
    #: The public field that holds the user's own prompt text, named when it alone does not fit.
    prompt_param: str = "messages"


class PackedContext(_Msg):
    """Which retrieved passages went into the prompt (numbers are the sources' ``n``)."""

    sources: tuple[int, ...] = Field(description="Sources in the prompt, as [n] there.")
    trimmed: tuple[int, ...] = Field((), description="Sources cut short to fit the context window.")
    dropped: tuple[int, ...] = Field((), description="Retrieved sources left out: no room in the context window.")
    prompt_tokens: int = Field(description="Tokens of the packed prompt.")
    max_tokens: int = Field(description="Completion tokens reserved (lowered from the default when needed).")


class GenerationChunk(_Msg):
    """One streamed piece of generated text; the last has ``finish_reason`` and counts.

    The first chunk of every generation is sent as soon as the generator has admitted the
    request, before the engine produces a token: it carries no text, and ``context`` for a
    :class:`RagPrompt`. (The ingress answers 503 when it does not arrive in time.)
    """

    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    context: PackedContext | None = None


# --------------------------------------------------------------------------- public API
class SamplingFields(_Req):
    """Sampling fields shared by the public generation routes; ``None`` takes the default."""

    max_tokens: int | None = Field(None, ge=1, description="Most tokens to generate.")
    temperature: float | None = Field(None, ge=0, le=2, description="0 = greedy.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling mass.")
    stop: list[str] | None = Field(None, max_length=8, description="Stop strings.")
    seed: int | None = Field(None, description="Sampling seed.")

    @field_validator("temperature", "top_p", mode="before")
    @classmethod
    def _int_is_float(cls, v: object) -> object:
        # JSON has one number type: accept 1 for 1.0 even in strict mode.
        return float(v) if isinstance(v, int) and not isinstance(v, bool) else v


class RetrievalFields(_Req):
    """Where and how to retrieve; shared by the retrieval routes."""

    top_k: int | None = Field(None, ge=1, description="Passages to return / put in the prompt.")
    mode: Literal["hybrid", "dense", "lexical"] | None = Field(None, description="Retrieval mode.")
    collection: CollectionName | None = Field(None, description="Collection to search (default: the configured one).")
    filter: Filter | None = Field(None, description="Metadata conditions the passages must meet.")


class RetrieveRequest(RetrievalFields):
    question: str = Field(description="The question.")


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


class RetrieveResponse(BaseModel):
    sources: list[Source]
    mode: str
    query_tokens: list[str]


class QueryRequest(SamplingFields, RetrievalFields):
    question: str = Field(description="The question.")
    stream: bool = Field(False, description="Stream server-sent events.")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


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


class EmbeddingsRequest(_Req):
    input: str | list[str] = Field(description="Text or texts to embed.")
    model: str | None = Field(None, description="Ignored; the deployed encoder is used.")
    encoding_format: Literal["float"] = "float"


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float]


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: dict[str, int]


class GenerateRequest(SamplingFields):
    prompt: str = Field(description="User message sent to the model as is, no retrieval.")
    system: str | None = Field(None, description="Optional system message.")
    stream: bool = False


class GenerateResponse(BaseModel):
    id: str
    text: str
    finish_reason: str | None
    usage: Usage


class ChatCompletionRequest(SamplingFields, RetrievalFields):
    """OpenAI chat completions; the last user message is the retrieval query."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=64)
    model: str | None = None
    stream: bool = False
    n: int = Field(1, ge=1, le=1, description="Only one choice is supported.")
    retrieval: bool = Field(True, description="ragserve extension: set false to skip retrieval.")


# --------------------------------------------------------------------------- documents
class DocumentIn(_Req):
    """One document to upsert through ``POST /v1/documents``."""

    id: DocId = Field(description="Stable document id; re-sending it replaces the document.")
    text: str = Field(min_length=1, description="Full text; it is chunked by the server.")
    title: str = Field("", max_length=1024)
    source: str = Field("", max_length=2048, description="Where it came from (default: the id).")
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS)
    created_at: int | str | None = Field(None, description="ISO 8601 or epoch seconds.")

    @field_validator("created_at")
    @classmethod
    def _time(cls, v: int | str | None) -> int:
        return epoch_seconds(v)


class DocumentsRequest(_Req):
    collection: CollectionName | None = Field(None, description="Target collection (default: the configured one).")
    documents: list[DocumentIn] = Field(min_length=1, description="Documents to upsert.")


class DocumentResult(BaseModel):
    id: str
    status: Literal["added", "updated", "unchanged"]
    chunks: int


class DocumentsResponse(BaseModel):
    collection: str
    results: list[DocumentResult]


class CollectionRequest(_Req):
    name: CollectionName = Field(description="New collection's name.")

