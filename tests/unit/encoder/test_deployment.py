"""The encoder deployment's class, built in this process (the bundled model; no Ray): what its
public methods return."""

from __future__ import annotations

import asyncio

import pytest

from deployments.config import EncoderConfig
from deployments.encoder.deployment import Encoder
from deployments.protocol.stages import QueryVector


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    pytest.importorskip("sentence_transformers")
    return Encoder.func_or_class(EncoderConfig())


def test_info_names_the_model_its_dimension_tag_and_backend(encoder: Encoder) -> None:
    assert asyncio.run(encoder.info()) == {"model": "bundled:all-MiniLM-L6-v2", "dim": 384, "encoder": "",
                                           "backend": f"{encoder.cfg.backend}/{encoder.cfg.precision}"}


def test_a_question_vector_says_which_encoder_made_it(encoder: Encoder, monkeypatch) -> None:
    async def one(text: str) -> list[float]:  # the batch queue needs a replica context
        return encoder.embedder.embed([text])[0]

    monkeypatch.setattr(encoder, "_one", one)
    v = asyncio.run(encoder.encode("Which pump?"))
    assert isinstance(v, QueryVector) and len(v.values) == 384
    assert (v.model, v.encoder) == ("bundled:all-MiniLM-L6-v2", "")
    got = asyncio.run(encoder.embed(["pump", "valve"]))
    assert len(got.vectors) == 2 and got.encoder == "" and got.tokens > 0
