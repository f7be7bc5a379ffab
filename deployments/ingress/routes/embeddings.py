"""``POST /v1/embeddings``, ``GET /v1/models`` and ``GET /v1/models/{model}`` (OpenAI shapes)."""

from __future__ import annotations

import base64
import struct
import time

from fastapi import APIRouter, Request

from deployments.errors import InvalidRequestError, NotFoundError, PayloadTooLargeError
from deployments.ingress import http
from deployments.ingress import openai_compat as oa
from deployments.ingress.auth import Principal
from deployments.ingress.openapi import operation
from deployments.ingress.pipeline import Pipeline
from deployments.protocol.openai import (
    MAX_EMBED_INPUTS, Embedding, EmbeddingsRequest, EmbeddingsResponse, Model, ModelList, UsageInfo,
)



def b64_float32(vector: tuple[float, ...]) -> str:
    """A vector as OpenAI's ``base64`` encoding: little-endian float32 bytes, base64 (what the
    official client decodes with ``np.frombuffer(..., dtype="float32")``)."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def texts_of(body: EmbeddingsRequest) -> list[str]:
    """The texts to embed.

    Raises:
        InvalidRequestError: token arrays, or empty texts. PayloadTooLargeError: over 256 inputs.
    """
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    if not texts or any(not isinstance(t, str) for t in texts):
        raise InvalidRequestError("input must be a string or a non-empty list of strings; token arrays are not "
                                  "supported (the encoder has its own tokenizer: with langchain's "
                                  "OpenAIEmbeddings set check_embedding_ctx_length=False)", param="input")
    if any(not t.strip() for t in texts):
        raise InvalidRequestError("input must not contain empty strings", param="input")
    if len(texts) > MAX_EMBED_INPUTS:
        raise PayloadTooLargeError(f"at most {MAX_EMBED_INPUTS} inputs per request", param="input")
    return texts


def router(p: Pipeline) -> APIRouter:
    r = APIRouter(tags=["openai"])
    max_body = p.cfg.ingress.max_body_bytes
    started = int(time.time())

    def served() -> list[Model]:
        return [Model(id=p.cfg.generator.model, created=started), Model(id=p.cfg.encoder.model, created=started)]

    @r.post("/v1/embeddings", **operation(body=EmbeddingsRequest, response=EmbeddingsResponse,
                                          errors=(400, 404, 413),
                                          examples={"texts": {"input": ["pump pressure", "error E-4471"],
                                                              "encoding_format": "float"}}))
    async def embeddings(request: Request, who: Principal = p.access.requires("query")) -> EmbeddingsResponse:
        """Unit-length vectors from the deployed encoder; usage counts the encoder's own tokens."""
        body = await http.read_json(request, EmbeddingsRequest, max_body)
        model = oa.served_model(body.model, p.cfg.encoder.model)
        texts = texts_of(body)
        got = await p.embed(texts)
        dim = len(got.vectors[0])
        if body.dimensions is not None and body.dimensions != dim:
            raise InvalidRequestError(f"dimensions must be {dim}, the encoder's own: truncated embeddings are not "
                                      "supported", param="dimensions")
        as_b64 = body.encoding_format == "base64"
        data = [Embedding(index=i, embedding=b64_float32(v) if as_b64 else list(v)) for i, v in enumerate(got.vectors)]
        return EmbeddingsResponse(data=data, model=model,
                                  usage=UsageInfo(prompt_tokens=got.tokens, total_tokens=got.tokens))

    @r.get("/v1/models", **operation(response=ModelList, common=False))
    async def list_models(who: Principal = p.access.requires("query")) -> ModelList:
        """The served models: the generator (chat, completions) and the encoder (embeddings)."""
        return ModelList(data=served())

    @r.get("/v1/models/{model:path}", **operation(response=Model, errors=(404,), common=False))
    async def get_model(model: str, who: Principal = p.access.requires("query")) -> Model:
        """One served model (404 for any other id)."""
        for m in served():
            if m.id == model:
                return m
        raise NotFoundError(f"model '{model}' is not served here", param="model")

    return r
