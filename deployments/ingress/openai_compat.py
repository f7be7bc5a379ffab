"""From the OpenAI surface to ragserve's stages and back: pure functions, unit-tested.

Messages become text chat turns (or a 400 naming what the served model cannot read), OpenAI
sampling parameters become :class:`SamplingParams` (or a 400 naming the field), the engine's
log probabilities become OpenAI's two logprobs shapes, and a requested model id is checked
against the served ones (404 otherwise, as OpenAI and vLLM answer).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from deployments import models
from deployments.errors import InvalidRequestError, NotFoundError
from deployments.protocol.openai import (
    ChatCompletionMessage, ChatCompletionRequest, ChatLogprob, ChoiceLogprobs, CompletionLogprobs, CompletionRequest,
    RefusalPart, SamplingOptions, TextPart, TopLogprob,
)
from deployments.protocol.stages import StructuredOutput, TokenLogprob
from deployments.protocol.types import ChatMessage

MAX_STOP = 8


def served_model(requested: str | None, served: str) -> str:
    """The served model a request names (None: the default). A bundled model also answers to
    its Hugging Face id, which is what people type.

    Raises:
        NotFoundError: another model (param ``model``).
    """
    if requested is None or requested == served:
        return served
    bundled = models.BUNDLED.get(served.removeprefix("bundled:")) if served.startswith("bundled:") else None
    if bundled is not None and requested == bundled.hf_id:
        return served
    raise NotFoundError(f"model '{requested}' is not served here; GET /v1/models lists '{served}'", param="model")


def chat_messages(messages: Sequence[ChatCompletionMessage]) -> list[ChatMessage]:
    """OpenAI messages as text chat turns (``developer`` is a system turn).

    Raises:
        InvalidRequestError: tool/function turns, tool calls, audio, or non-text content parts,
            naming the message and part.
    """
    out = []
    for i, m in enumerate(messages):
        where = f"messages.{i}"
        if m.role in ("tool", "function"):
            raise InvalidRequestError(f"{where}.role: {m.role} messages are not supported: the served model calls "
                                      "no tools", param=f"{where}.role")
        for name in ("tool_calls", "function_call", "audio"):
            if getattr(m, name):
                raise InvalidRequestError(f"{where}.{name} is not supported: the served model calls no tools and "
                                          "reads text only", param=f"{where}.{name}")
        text = content_text(m.content, where)
        if m.role == "assistant" and not text and m.refusal:
            text = m.refusal
        out.append(ChatMessage(role="system" if m.role == "developer" else m.role, content=text))
    return out


def content_text(content: str | list | None, where: str) -> str:
    """A message's text: the string, or its text parts joined by newlines."""
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for j, part in enumerate(content):
        if isinstance(part, TextPart):
            parts.append(part.text)
        elif isinstance(part, RefusalPart):
            parts.append(part.refusal)
        else:
            raise InvalidRequestError(f"{where}.content.{j}: '{part.type}' content is not supported: the served "
                                      "model reads text only", param=f"{where}.content.{j}")
    return "\n".join(parts)


def stop_strings(stop: str | list[str] | None) -> tuple[str, ...]:
    """OpenAI's ``stop`` (a string or up to 8 strings) as a tuple."""
    values = [stop] if isinstance(stop, str) else list(stop or ())
    if len(values) > MAX_STOP:
        raise InvalidRequestError(f"stop takes at most {MAX_STOP} strings", param="stop")
    return tuple(v for v in values if v)


def logit_bias(bias: dict[str, int] | None) -> tuple[tuple[int, float], ...]:
    """``{"token id": bias}`` as (id, bias) pairs; ids are the served model's tokenizer's."""
    out = []
    for key, value in (bias or {}).items():
        if not key.isdigit():
            raise InvalidRequestError(f"logit_bias keys are token ids (digits); got {key[:20]!r}", param="logit_bias")
        if not -100 <= value <= 100:
            raise InvalidRequestError("logit_bias values lie in [-100, 100]", param="logit_bias")
        out.append((int(key), float(value)))
    return tuple(out)


def common_sampling(body: SamplingOptions) -> dict[str, object]:
    """The SamplingParams fields shared by chat and text completions."""
    return {"n": body.n or 1, "presence_penalty": body.presence_penalty or 0.0,
            "frequency_penalty": body.frequency_penalty or 0.0, "logit_bias": logit_bias(body.logit_bias)}


def chat_limits(body: ChatCompletionRequest) -> tuple[int | None, str]:
    """The completion limit and the field that set it (the smaller of the two names wins)."""
    given = [(v, k) for k, v in (("max_completion_tokens", body.max_completion_tokens),
                                 ("max_tokens", body.max_tokens)) if v is not None]
    return min(given) if given else (None, "max_completion_tokens")


def chat_options(body: ChatCompletionRequest) -> dict[str, object]:
    """The chat-only SamplingParams fields: log probabilities and structured output.

    Raises:
        InvalidRequestError: parameters that cannot be honoured (named).
    """
    if body.top_logprobs is not None and not body.logprobs:
        raise InvalidRequestError("top_logprobs needs logprobs: true", param="top_logprobs")
    for name, value in (("tool_choice", body.tool_choice), ("function_call", body.function_call)):
        if value not in (None, "none", "auto"):
            raise InvalidRequestError(f"{name} must be none or auto: the served model calls no tools", param=name)
    if body.audio is not None or "audio" in (body.modalities or ()):
        raise InvalidRequestError("audio output is not supported: the served model writes text only",
                                  param="audio" if body.audio is not None else "modalities")
    return {"logprobs": (body.top_logprobs or 0) if body.logprobs else None,
            "structured": structured(body)}


def structured(body: ChatCompletionRequest) -> StructuredOutput | None:
    """``response_format`` as constrained decoding (None for plain text)."""
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return StructuredOutput(kind="json_object")
    if fmt.json_schema is None or not fmt.json_schema.schema_:
        raise InvalidRequestError("response_format json_schema needs json_schema.schema",
                                  param="response_format.json_schema")
    return StructuredOutput(kind="json_schema", json_schema=fmt.json_schema.schema_)


def completion_prompts(body: CompletionRequest) -> list[str]:
    """The text prompts of a completions request.

    Raises:
        InvalidRequestError: token-id prompts, empty prompts, ``suffix``, ``best_of`` above ``n``.
    """
    if body.suffix:
        raise InvalidRequestError("suffix is not supported (no insertion mode)", param="suffix")
    if body.best_of is not None and body.best_of != (body.n or 1):
        raise InvalidRequestError("best_of must equal n: every sampled completion is returned", param="best_of")
    prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
    if not prompts or any(not isinstance(p, str) for p in prompts):
        raise InvalidRequestError("prompt must be a string or a non-empty list of strings (token ids are not "
                                  "supported)", param="prompt")
    if any(not p.strip() for p in prompts):
        raise InvalidRequestError("prompt is empty", param="prompt")
    return prompts


def chat_logprobs(tokens: Iterable[TokenLogprob]) -> ChoiceLogprobs:
    """Engine log probabilities in the chat shape."""
    def top(token: str, lp: float) -> TopLogprob:
        return TopLogprob(token=token, logprob=lp, bytes=list(token.encode()))

    return ChoiceLogprobs(content=[
        ChatLogprob(token=t.token, logprob=t.logprob, bytes=list(t.token.encode()),
                    top_logprobs=[top(tok, lp) for tok, lp in t.top]) for t in tokens])


def completion_logprobs(tokens: Sequence[TokenLogprob], offset: int = 0) -> CompletionLogprobs:
    """Engine log probabilities in the (legacy) completions shape; offsets count characters."""
    offsets, at = [], offset
    for t in tokens:
        offsets.append(at)
        at += len(t.token)
    return CompletionLogprobs(tokens=[t.token for t in tokens], token_logprobs=[t.logprob for t in tokens],
                              top_logprobs=[dict(t.top) for t in tokens], text_offset=offsets)
