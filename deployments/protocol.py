"""Typed messages: between stages (frozen) and on the public HTTP API.

Stage messages cross Ray process boundaries, so they are small frozen pydantic models rather
than dicts. Public request models forbid unknown fields so a typo is a 400 naming the field.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


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


class SearchRequest(_Msg):
    """What the search stage needs: the prepared query, its vector and knobs."""

    query: PreparedQuery
    vector: tuple[float, ...]
    top_k: int
    mode: Literal["hybrid", "dense", "lexical"] | None = None


class Hit(_Msg):
    """One retrieved chunk."""

    id: str = Field(description="Stable chunk id.")
    doc_id: str = Field(description="Document the chunk belongs to.")
    source: str = Field(description="Where the document came from (path or URL).")
    title: str = Field("", description="Document title, if known.")
    chunk_index: int = Field(description="Position of the chunk in its document.")
    text: str = Field(description="Chunk text.")
    score: float = Field(description="Fused relevance score (higher is better).")


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


class ChatMessage(BaseModel):
    """An OpenAI chat message (only text content)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=200_000)


class GenerationRequest(_Msg):
    """Prompt for the generator: chat messages (templated by the engine's tokenizer)."""

    messages: tuple[ChatMessage, ...]
    sampling: SamplingParams
    request_id: str


class GenerationChunk(_Msg):
    """One streamed piece of generated text; the last has ``finish_reason`` and counts."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


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


class RetrieveRequest(_Req):
    question: str = Field(description="The question.")
    top_k: int | None = Field(None, ge=1, description="Passages to return.")
    mode: Literal["hybrid", "dense", "lexical"] | None = Field(None, description="Retrieval mode.")


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


class RetrieveResponse(BaseModel):
    sources: list[Source]
    mode: str
    query_tokens: list[str]


class QueryRequest(SamplingFields):
    question: str = Field(description="The question.")
    top_k: int | None = Field(None, ge=1, description="Passages put in the prompt.")
    mode: Literal["hybrid", "dense", "lexical"] | None = Field(None, description="Retrieval mode.")
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


class ChatCompletionRequest(SamplingFields):
    """OpenAI chat completions; the last user message is the retrieval query."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=64)
    model: str | None = None
    stream: bool = False
    n: int = Field(1, ge=1, le=1, description="Only one choice is supported.")
    top_k: int | None = Field(None, ge=1, description="ragserve extension: passages retrieved.")
    retrieval: bool = Field(True, description="ragserve extension: set false to skip retrieval.")
