"""The OpenAI surface: typed requests, responses and stream chunks, following the OpenAI API
reference (chat completions, completions, embeddings, models).

Every parameter the official client may send is a field here: honoured, or accepted and
ignored (each field's description says which, and why). A parameter OpenAI does not have is
still a 400 naming it, as OpenAI itself answers. ragserve's own extensions (retrieval,
sources, citations) are marked as such; clients send them through ``extra_body``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from deployments.protocol.api import Condense, SearchQuery, Source
from deployments.protocol.stages import Mode, PackedContext
from deployments.protocol.types import (
    MAX_SEED, MIN_SEED, VISIBLE_TEXT, CollectionName, Filter, Request, StopString, float_is_int,
)

IGNORED = "Accepted and ignored: "
MAX_N = 4  # completions per request the engine is asked for (each costs a full decode)
#: What ``tool_choice``/``function_call`` may be (any other is parsed, to be a 400 that says why).
NO_TOOL_CHOICE = {"anyOf": [{"enum": ["none", "auto"]}, {"type": "null"}]}


class OpenAIRequest(Request):
    """Base of the OpenAI request bodies: unknown fields and wrong types are 400s, like OpenAI's own
    (numbers are coerced as in every request: :class:`~deployments.protocol.types.Request`)."""


# --------------------------------------------------------------------------- messages
class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["text"]
    text: str


class ImageUrlPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["image_url"]


class InputAudioPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["input_audio"]


class FilePart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["file"]


class RefusalPart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["refusal"]
    refusal: str


ContentPart = Annotated[TextPart | ImageUrlPart | InputAudioPart | FilePart | RefusalPart,
                        Field(discriminator="type")]


class ChatCompletionMessage(BaseModel):
    """A message of any OpenAI role; :mod:`deployments.ingress.openai` turns it into text or a
    400 naming what the served model cannot take (images, audio, files, tool results)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    # tool and function turns are parsed only to answer them with a 400 that says why; the
    # document lists the roles that are served.
    role: Literal["system", "developer", "user", "assistant", "tool", "function"] = Field(
        json_schema_extra={"enum": ["system", "developer", "user", "assistant"]})
    # Image, audio and file parts are parsed only to answer them with a 400 that says why; the
    # document lists the parts that are served (inline: a $ref here is not remapped by pydantic).
    content: str | list[ContentPart] | None = Field(
        None, description="Text, or text (and an assistant's refusal) parts.",
        json_schema_extra={"anyOf": [{"type": "string"},
                                     {"type": "array", "items": {"oneOf": [TextPart.model_json_schema(),
                                                                           RefusalPart.model_json_schema()]}},
                                     {"type": "null"}]})
    name: str | None = Field(None, description=IGNORED + "participant names are not passed to the model.")
    refusal: str | None = Field(None, description="An assistant turn's refusal text (kept as its content).")
    # Parsed so that a client sending them gets a 400 saying why; documented as what is served.
    tool_calls: list[dict[str, Any]] | None = Field(None, description="Not supported: 400 when non-empty.",
                                                    json_schema_extra={"anyOf": [{"type": "array", "maxItems": 0},
                                                                                 {"type": "null"}]})
    tool_call_id: str | None = None
    function_call: dict[str, Any] | None = Field(None, description="Not supported: 400 when set.",
                                                 json_schema_extra={"anyOf": [{"type": "null"}]})
    audio: dict[str, Any] | None = Field(None, description="Not supported: 400 when set.",
                                         json_schema_extra={"anyOf": [{"type": "null"}]})


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool | None = Field(None, description="Send a usage chunk (empty choices) before [DONE].")
    include_obfuscation: bool | None = Field(None, description=IGNORED + "no obfuscation padding is sent.")


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
    name: str
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class ExtensionFields(OpenAIRequest):
    """ragserve extensions of chat completions (send them in ``extra_body``)."""

    retrieval: bool = Field(True, description="ragserve: retrieve sources for the conversation (false: the model "
                            "alone).")
    top_k: int | None = Field(None, ge=1, description="ragserve: passages to retrieve.")
    mode: Mode | None = Field(None, description="ragserve: retrieval mode.")
    collection: CollectionName | None = Field(None, description="ragserve: collection to search.")
    filter: Filter | None = Field(None, description="ragserve: metadata filter of the passages.")
    condense: Condense | None = Field(None, description="ragserve: how a follow-up becomes a search query.")


class SamplingOptions(OpenAIRequest):
    """Sampling parameters common to chat and text completions."""

    frequency_penalty: float | None = Field(None, ge=-2, le=2, description="Honoured.")
    presence_penalty: float | None = Field(None, ge=-2, le=2, description="Honoured.")
    logit_bias: dict[str, int] | None = Field(None, description="Honoured: token ids of the served model's "
                                              "tokenizer -> bias in [-100, 100].")
    n: int | None = Field(None, ge=1, le=MAX_N, description=f"Honoured, up to {MAX_N}.")
    seed: int | None = Field(None, ge=MIN_SEED, le=MAX_SEED, description="Honoured (reproducible sampling).")
    stop: StopString | list[StopString] | None = Field(None, description="Honoured, up to 8 strings.")
    stream: bool | None = Field(None, description="Honoured: server-sent events ending with data: [DONE].")
    stream_options: StreamOptions | None = Field(None, description="Honoured: include_usage.")
    temperature: float | None = Field(None, ge=0, le=2, description="Honoured.")
    top_p: float | None = Field(None, gt=0, le=1, description="Honoured.")
    user: str | None = Field(None, max_length=256, description="Honoured: written to the request log line.")

    @field_validator("logit_bias", mode="before")
    @classmethod
    def _biases(cls, v: object) -> object:
        return {k: float_is_int(b) for k, b in v.items()} if isinstance(v, dict) else v


class ChatCompletionRequest(SamplingOptions, ExtensionFields):
    """``POST /v1/chat/completions``."""

    messages: list[ChatCompletionMessage] = Field(min_length=1, max_length=64)
    model: str | None = Field(None, description="A served model id (GET /v1/models); default: the generator.")
    max_completion_tokens: int | None = Field(None, ge=1, description="Honoured (the current name of the limit).")
    max_tokens: int | None = Field(None, ge=1, description="Honoured (deprecated by OpenAI for "
                                   "max_completion_tokens; the smaller wins when both are given).")
    logprobs: bool | None = Field(None, description="Honoured.")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="Honoured (needs logprobs).")
    response_format: ResponseFormat | None = Field(None, description="Honoured: json_object and json_schema "
                                                   "through the engine's structured outputs.")
    tools: list[dict[str, Any]] | None = Field(None, description=IGNORED + "the served model calls no tools; "
                                               "tool_choice other than none/auto is a 400.")
    tool_choice: str | dict[str, Any] | None = Field(None, description="none or auto only.",
                                                     json_schema_extra=NO_TOOL_CHOICE)
    parallel_tool_calls: bool | None = Field(None, description=IGNORED + "no tools are called.")
    functions: list[dict[str, Any]] | None = Field(None, description=IGNORED + "deprecated tools.")
    function_call: str | dict[str, Any] | None = Field(None, description="none or auto only.",
                                                       json_schema_extra=NO_TOOL_CHOICE)
    audio: dict[str, Any] | None = Field(None, description="Not supported: 400 when set (text only).")
    modalities: list[Literal["text", "audio"]] | None = Field(None, description="text only; audio is a 400.")
    metadata: dict[str, str] | None = Field(None, description=IGNORED + "nothing is stored.")
    store: bool | None = Field(None, description=IGNORED + "completions are not stored.")
    service_tier: str | None = Field(None, description=IGNORED + "one tier.")
    prediction: dict[str, Any] | None = Field(None, description=IGNORED + "no speculative decoding.")
    reasoning_effort: str | None = Field(None, description=IGNORED + "not a reasoning model.")
    verbosity: str | None = Field(None, description=IGNORED)
    web_search_options: dict[str, Any] | None = Field(None, description=IGNORED + "retrieval is ragserve's own.")
    prompt_cache_key: str | None = Field(None, description=IGNORED + "the engine caches prefixes by itself.")
    prompt_cache_retention: str | None = Field(None, description=IGNORED)
    prompt_cache_options: dict[str, Any] | None = Field(None, description=IGNORED)
    safety_identifier: str | None = Field(None, description=IGNORED)
    moderation: dict[str, Any] | None = Field(None, description=IGNORED + "no moderation layer.")


class CompletionRequest(SamplingOptions):
    """``POST /v1/completions``: the model alone on a raw text prompt (no chat template, no retrieval)."""

    model: str | None = Field(None, description="A served model id; default: the generator.")
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="Text, or several texts (token arrays are a 400).",
        json_schema_extra={"anyOf": [{"type": "string", **VISIBLE_TEXT},
                                     {"type": "array", "items": {"type": "string", **VISIBLE_TEXT}, "minItems": 1}]})
    max_tokens: int | None = Field(None, ge=1, description="Honoured (OpenAI's default is 16).")
    echo: bool | None = Field(None, description="Honoured: the prompt is prepended to each completion.")
    logprobs: int | None = Field(None, ge=0, le=5, description="Honoured: alternatives per token.")
    best_of: int | None = Field(None, ge=1, le=MAX_N, description="Honoured when equal to n (the engine returns what it "
                                "samples); larger is a 400.")
    suffix: str | None = Field(None, description="Not supported: 400 when set (no insertion mode).")


# --------------------------------------------------------------------------- responses
class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[ChatLogprob] | None
    refusal: list[ChatLogprob] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None


class RagExtras(BaseModel):
    """ragserve's additions to a chat completion (and to the first streamed chunk)."""

    sources: list[Source] = Field(default_factory=list, description="ragserve: the retrieved passages, [n] in "
                                  "the answer.")
    context: PackedContext | None = Field(None, description="ragserve: which sources went into the prompt.")
    search_query: SearchQuery | None = Field(None, description="ragserve: what was searched.")


class ChatCompletion(RagExtras):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    system_fingerprint: str | None = None
    cited: list[int] = Field(default_factory=list, description="ragserve: sources cited as [n] (first choice), of those in the prompt.")


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: ChunkDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: UsageInfo | None = None
    # ragserve: on the first chunk only (None elsewhere, and left out of the JSON).
    sources: list[Source] | None = None
    context: PackedContext | None = None
    search_query: SearchQuery | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None


# --------------------------------------------------------------------------- embeddings and models
#: Most texts one embeddings request may carry (more is a 413).
MAX_EMBED_INPUTS = 256


class EmbeddingsRequest(OpenAIRequest):
    """``POST /v1/embeddings``."""

    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="Text or texts (token arrays are a 400: the served encoder has its own tokenizer).",
        # What is served, documented as such: the token-array forms are parsed only to answer them
        # with a 400 that says why (OpenAI's own type allows them).
        json_schema_extra={"anyOf": [
            {"type": "string", "minLength": 1},
            {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1,
             "maxItems": MAX_EMBED_INPUTS}]})
    model: str | None = Field(None, description="A served model id; default: the encoder.")
    encoding_format: Literal["float", "base64"] | None = Field(
        None, description="Honoured: float arrays, or base64 of little-endian float32 (the client's default).")
    dimensions: int | None = Field(None, ge=1, description="Honoured only as the encoder's own dimension; "
                                   "anything else is a 400 (no truncated embeddings).")
    user: str | None = Field(None, max_length=256, description="Honoured: written to the request log line.")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="Floats, or base64 when encoding_format is base64.")


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: UsageInfo


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ragserve"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]
