"""Typed messages between the stages (frozen pydantic models, never dicts).

They cross Ray process boundaries: the ingress sends them to the preprocess, encoder, search,
rerank and generator deployments and gets these back.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from deployments.protocol.types import ChatMessage, Filter, Message

Mode = Literal["hybrid", "dense", "lexical"]


class PreparedQuery(Message):
    """Output of preprocess: the text for the encoder and the tokens for lexical search."""

    text: str = Field(description="Unicode-normalised question, whitespace collapsed.")
    tokens: tuple[str, ...] = Field(description="Lexical tokens: segmented, stopwords removed, stemmed.")
    language: Literal["en", "zh", "mixed"] = Field(description="Dominant script of the question.")
    key_terms: tuple[str, ...] = Field(
        (), description="Identifiers, versions, years and model numbers the question names, in canonical form "
        "(deployments/preprocess/terms.py): the search stage prefers passages naming them exactly.")

    @property
    def lexical_text(self) -> str:
        """Tokens joined by spaces: what the BM25 side of the index was built on."""
        return " ".join(self.tokens)


class Embeddings(Message):
    """Vectors of several texts and the tokens the model read (for usage accounting)."""

    vectors: tuple[tuple[float, ...], ...]
    tokens: int = Field(description="Tokens the encoder processed, special tokens included, after truncation.")
    encoder: str = Field("", description="Tag of the encoder that made the vectors (``tune.artefacts.encoder_tag``): "
                         "they are written to that encoder's copy of a collection.")


class QueryVector(Message):
    """A question's vector and the encoder that made it (any replica may answer during a switch of
    encoders, so the vector says which one it is)."""

    values: tuple[float, ...]
    model: str = Field(description="The encoder's model reference (encoder.model of its replica).")
    encoder: str = Field("", description="Its tag: the copy of a collection the vector may be searched in.")


class SearchRequest(Message):
    """What the search stage needs: the prepared query, its vector and knobs."""

    query: PreparedQuery
    vector: tuple[float, ...]
    top_k: int
    mode: Mode | None = None
    collection: str | None = None
    encoder: str = Field("", description="Tag of the encoder that made ``vector``: only that encoder's copy of "
                         "the collection is searched.")
    filter: Filter | None = None
    acl: tuple[str, ...] | None = Field(
        None, description="Groups the caller may read (a mandatory filter, set by the ingress from the API key, "
        "never from the request); None: no ACL filter (a server without keys).")


class Hit(Message):
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


class SearchResult(Message):
    hits: tuple[Hit, ...]
    mode: Mode
    encoder: str = Field("", description="Model reference of the encoder that embedded the question and, the "
                         "search stage makes sure, the passages searched (set by the ingress).")


class StructuredOutput(Message):
    """Constrained decoding (vLLM structured outputs): any JSON object, or one matching a schema."""

    kind: Literal["json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class SamplingParams(Message):
    """Validated sampling parameters handed to the generator."""

    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...] = ()
    seed: int | None = None
    max_tokens_is_default: bool = Field(
        False, description="max_tokens is the server's default, not the caller's: the generator may lower it "
        "to fit the prompt into the context instead of rejecting the request.")
    n: int = Field(1, description="Completions generated for the prompt.")
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = Field((), description="(token id, bias) pairs.")
    logprobs: int | None = Field(None, description="Alternatives to return per token (0: the chosen one only); "
                                 "None: no log probabilities.")
    structured: StructuredOutput | None = None


class RagPrompt(Message):
    """A retrieval-augmented prompt, packed into the context window by the generator (which owns
    the tokenizer): the passages are budgeted in the model's own tokens."""

    system_prompt: str = Field(description="ragserve's grounding instructions.")
    question: str = Field(description="The user's question (the last user turn of a chat).")
    hits: tuple[Hit, ...] = Field(description="Retrieved passages, best first; they become sources [1]..[n].")
    history: tuple[ChatMessage, ...] = Field((), description="Earlier chat turns, client system messages included.")
    passage_chars: int = Field(description="Longest passage text put in the prompt, in characters.")


class GenerationRequest(Message):
    """Prompt for the generator, exactly one of: chat ``messages`` as given, a :class:`RagPrompt`
    to pack (both templated by the engine's chat template), or a raw ``text`` prompt (the
    completions API: no template)."""

    messages: tuple[ChatMessage, ...] = ()
    rag: RagPrompt | None = None
    text: str | None = None
    sampling: SamplingParams
    request_id: str
    #: The public field that holds the user's own prompt text, named when it alone does not fit.
    prompt_param: str = "messages"


class PackedContext(Message):
    """Which retrieved passages went into the prompt (numbers are the sources' ``n``)."""

    sources: tuple[int, ...] = Field(description="Sources in the prompt, as [n] there.")
    trimmed: tuple[int, ...] = Field((), description="Sources cut short to fit the context window.")
    dropped: tuple[int, ...] = Field((), description="Retrieved sources left out: no room in the context window.")
    prompt_tokens: int = Field(description="Tokens of the packed prompt.")
    max_tokens: int = Field(description="Completion tokens reserved (lowered from the default when needed).")


class TokenLogprob(Message):
    """Log probability of one generated token, with the most likely alternatives."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


class GenerationChunk(Message):
    """One streamed piece of a generation.

    Order: one admission chunk as soon as the generator has admitted the request, before the
    engine produces a token (no text; ``context`` for a :class:`RagPrompt`; the ingress answers
    503 when it does not arrive in time); then text deltas of choice ``index``; a chunk with
    ``finish_reason`` ends its choice; the chunk with ``done`` (the last) carries the request's
    token counts.
    """

    text: str = ""
    index: int = 0
    finish_reason: str | None = None
    logprobs: tuple[TokenLogprob, ...] = ()
    done: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    context: PackedContext | None = None
