"""Types shared by the stage messages and the public API: ids, filters, chat messages.

Request models forbid unknown fields (a typo is a 400 naming the field) and are strict ("5" is
not an int); stage messages are frozen, since they cross Ray process boundaries.
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
#: Document access groups: the ``acl`` of a document, the ``groups`` of an API key.
Group = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")]
MAX_GROUPS = 32
#: The group of a document without an ``acl``: every key of its tenant reads it.
PUBLIC_GROUP = "*"
#: Between a tenant and its collection's name in the stored name: ``acme__manuals``.
TENANT_SEP = "__"


def stored_collection(tenant: str, name: str) -> str:
    """The Milvus collection behind a tenant's collection ``name`` (no tenant: the name itself)."""
    return f"{tenant}{TENANT_SEP}{name}" if tenant else name


#: Between a stored collection's name and the tag of the encoder that embedded that copy of it
#: (``ragserve tune``: every encoder has its own copy, so no query meets another encoder's passages).
ENCODER_SEP = "__enc_"
_ENCODED = re.compile(rf"^(.+){ENCODER_SEP}([0-9a-f]{{16}})$")


#: How a model reference names a tuned encoder (``deployments/tune/artefacts.py`` makes them).
TUNED_ENCODER = "tuned:encoder-"


def encoder_tag(model: str) -> str:
    """The tag of an encoder's copies of the collections: a tuned encoder's version, "" for any
    other model (its copies keep the collections' own names, as before any tuning)."""
    return model.removeprefix(TUNED_ENCODER) if model.startswith(TUNED_ENCODER) else ""


def encoded_collection(stored: str, encoder_tag: str) -> str:
    """The copy of a stored collection embedded by the encoder ``encoder_tag`` ("" : the untuned
    encoder, whose copy is the stored collection itself)."""
    return f"{stored}{ENCODER_SEP}{encoder_tag}" if encoder_tag else stored


def split_encoded(name: str) -> tuple[str, str]:
    """(stored collection, encoder tag) of a copy's name: the inverse of :func:`encoded_collection`."""
    m = _ENCODED.match(name)
    return (m.group(1), m.group(2)) if m else (name, "")


def is_default_collection(stored: str, default: str) -> bool:
    """Whether a stored collection (of any encoder) is some tenant's default collection (created
    on first use)."""
    stored = split_encoded(stored)[0]
    return stored == default or stored.endswith(f"{TENANT_SEP}{default}")


#: Milvus stores INT64: the epoch seconds a timestamp may be (exclusive bounds).
MAX_EPOCH = 2**62
#: How a timestamp field is documented: what :func:`epoch_seconds` takes.
TIMESTAMP_SCHEMA = {"anyOf": [{"type": "integer", "exclusiveMinimum": -MAX_EPOCH, "exclusiveMaximum": MAX_EPOCH},
                              {"type": "string", "format": "date-time"}, {"type": "string", "format": "date"},
                              {"type": "null"}]}
#: What a text field's OpenAPI schema requires: one visible character (the server refuses a text
#: that is empty once whitespace, control and zero-width characters are gone, naming the field).
VISIBLE_TEXT = {"pattern": r"[^\s\x00-\x1f\x7f-\x9f\u200b-\u200d\u2060\ufeff]"}
#: Sampling seeds: what the engine's torch generator takes (a larger one failed inside the engine,
#: after admission: a 503 for the caller's own input).
MIN_SEED, MAX_SEED = -(2**63), 2**63 - 1
#: A stop string (an empty one would stop before the first token; vLLM refuses it).
StopString = Annotated[str, StringConstraints(min_length=1)]


def epoch_seconds(value: int | str | None) -> int:
    """An ISO 8601 date/datetime (UTC when no zone is given) or epoch seconds, as epoch seconds."""
    if value is None:
        return 0
    if isinstance(value, int):
        if not -MAX_EPOCH < value < MAX_EPOCH:
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


def int_is_float(v: object) -> object:
    """JSON has one number type: accept 1 for 1.0 in a float field even in strict mode."""
    return float(v) if isinstance(v, int) and not isinstance(v, bool) else v


def float_is_int(v: object) -> object:
    """JSON has one number type: 2.0 is the integer 2 (JSON Schema's ``integer`` says so too, and
    clients that keep numbers as doubles send it); 2.5 stays a float, a 400 in an integer field."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


#: The integer fields of the request bodies (of either surface): each takes an integral ``2.0``
#: (:func:`float_is_int`) and stays strict otherwise (``"2"`` and ``2.5`` are 400s). A validator
#: rather than an annotated type: pydantic 2.14 documents ``ge``/``le`` of an annotated type in a
#: union as ``ge``/``le``, not JSON Schema's ``minimum``/``maximum``.
INTEGER_FIELDS = ("max_tokens", "max_completion_tokens", "seed", "top_k", "n", "top_logprobs", "logprobs",
                  "best_of", "dimensions", "created_at")
#: The float fields of the request bodies: each takes an integer (``1`` for ``1.0``, :func:`int_is_float`).
FLOAT_FIELDS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")


class Message(BaseModel):
    """Base of the stage messages: frozen, no unknown fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Request(BaseModel):
    """Base of the public request bodies."""

    # strict: "5" is not an int and 1 is not a string, so wrong types are 400s, not guesses.
    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator(*INTEGER_FIELDS, mode="before", check_fields=False)
    @classmethod
    def _integers(cls, v: object) -> object:
        return float_is_int(v)

    @field_validator(*FLOAT_FIELDS, mode="before", check_fields=False)
    @classmethod
    def _floats(cls, v: object) -> object:
        return int_is_float(v)


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
    created_after: int | str | None = Field(None, description="created_at >= this (ISO 8601 or epoch seconds).", json_schema_extra=TIMESTAMP_SCHEMA)
    created_before: int | str | None = Field(None, description="created_at < this.", json_schema_extra=TIMESTAMP_SCHEMA)
    updated_after: int | str | None = Field(None, description="Ingested (this version) at or after this.", json_schema_extra=TIMESTAMP_SCHEMA)
    updated_before: int | str | None = Field(None, description="Ingested before this.", json_schema_extra=TIMESTAMP_SCHEMA)

    @field_validator("created_after", "created_before", "updated_after", "updated_before", mode="before")
    @classmethod
    def _time(cls, v: object) -> object:
        v = float_is_int(v)
        return epoch_seconds(v) if isinstance(v, (int, str)) and not isinstance(v, bool) else v

    @field_validator("doc_ids", "sources", "tags_any", "tags_all", mode="before")
    @classmethod
    def _list(cls, v: object) -> object:
        return tuple(v) if isinstance(v, list) else v  # JSON arrays arrive as lists


class ChatMessage(BaseModel):
    """A chat turn with text content: what the generator's chat template takes (the OpenAI
    surface turns its richer messages into these)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=200_000)
