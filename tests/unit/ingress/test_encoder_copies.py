"""The ingress keeps every encoder to its own copy of a collection: searches follow the encoder
replica that embedded the question, writes the one that embedded the chunks (fake stage handles:
the real stages are exercised by tests/integration/test_tune.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from deployments.config import parse_app_config
from deployments.errors import InvalidRequestError
from deployments.ingress.auth import OPEN
from deployments.ingress.pipeline import Pipeline
from deployments.protocol.api import RetrieveRequest
from deployments.protocol.stages import PreparedQuery, QueryVector, SearchResult

TAG = "0123456789abcdef"


class Call:
    """A handle method: records its arguments, answers with ``result``."""

    def __init__(self, result: Any) -> None:
        self.result, self.args = result, []

    def remote(self, *args: Any) -> Any:
        self.args.append(args)

        async def answer() -> Any:
            return self.result

        return answer()


class Handle:
    def __init__(self, **methods: Call) -> None:
        self.__dict__.update(methods)


def pipeline(vector: QueryVector) -> tuple[Pipeline, Call]:
    search = Call(SearchResult(hits=(), mode="dense"))
    handles = {"preprocess": Handle(preprocess=Call(PreparedQuery(text="q", tokens=("q",), language="en"))),
               "encoder": Handle(encode=Call(vector)), "search": Handle(search=search)}
    return Pipeline(handles, parse_app_config({})), search


@pytest.mark.parametrize("model, tag", [("bundled:all-MiniLM-L6-v2", ""), (f"tuned:encoder-{TAG}", TAG)])
def test_a_question_is_searched_in_the_copy_of_the_encoder_that_embedded_it(model: str, tag: str) -> None:
    p, search = pipeline(QueryVector(values=(0.1, 0.2), model=model, encoder=tag))
    got = asyncio.run(p.retrieve("Which pump?", RetrieveRequest(question="Which pump?", collection="kb")))
    (req,) = search.args[0]
    assert (req.collection, req.encoder) == ("kb", tag)
    assert got.result.encoder == model  # what the response reports


def test_a_copys_own_name_is_not_a_collection_name() -> None:
    p, _ = pipeline(QueryVector(values=(0.1,), model="m", encoder=""))
    with pytest.raises(InvalidRequestError, match="reserved") as err:
        p.collection(OPEN, f"kb__enc_{TAG}", param="name")
    assert err.value.param == "name"
    assert p.collection(OPEN, "kb__enc_notatag") == "kb__enc_notatag"


class Tokens:
    """Version tokens by copy name (what the search stage's ``ChunkStore`` bumps)."""

    def __init__(self, **tokens: str) -> None:
        self.tokens, self.read_for = tokens, []

    def read(self, collection: str) -> str | None:
        self.read_for.append(collection)
        return self.tokens.get(collection)


def cached_pipeline(vector: QueryVector, tokens: Tokens, model: str = f"tuned:encoder-{TAG}") -> tuple[Pipeline, Call]:
    from deployments.ingress.cache import RetrievalCache

    p, search = pipeline(vector)
    p.cfg = parse_app_config({"encoder": {"model": model}})
    p.encoder_tag = TAG if model.startswith("tuned:") else ""
    p.cache = RetrievalCache(p.cfg, tokens)
    return p, search


def ask_twice(p: Pipeline) -> None:
    for _ in range(2):
        asyncio.run(p.retrieve("Which pump?", RetrieveRequest(question="Which pump?", collection="kb")))


def test_the_cache_keys_entries_and_tokens_by_the_live_encoders_copy() -> None:
    tokens = Tokens(**{f"kb__enc_{TAG}": "t1"})
    p, search = cached_pipeline(QueryVector(values=(0.1,), model=f"tuned:encoder-{TAG}", encoder=TAG), tokens)
    ask_twice(p)
    assert tokens.read_for == [f"kb__enc_{TAG}"] * 2
    assert (len(search.args), p.cache.stats()["hit"]) == (1, 1)
    assert next(iter(p.cache.entries))[1] == f"kb__enc_{TAG}"
    # The stored collection's own token (the untuned encoder's copy) says nothing about this copy.
    tokens.tokens = {"kb": "t1"}
    ask_twice(p)
    assert (len(search.args), p.cache.stats()["hit"]) == (3, 1)


@pytest.mark.parametrize("model, answered_by", [(f"tuned:encoder-{TAG}", ("bundled:all-MiniLM-L6-v2", "")),
                                                ("bundled:all-MiniLM-L6-v2", (f"tuned:encoder-{TAG}", TAG))])
def test_a_retrieval_another_encoder_answered_is_never_cached(model: str, answered_by: tuple[str, str]) -> None:
    """During a rollout an encoder replica of the other model may embed the question (its copy is
    searched): that result is returned, but never kept as this ingress's encoder's."""
    tokens = Tokens(**{f"kb__enc_{TAG}": "t1", "kb": "t0"})
    p, search = cached_pipeline(QueryVector(values=(0.1,), model=answered_by[0], encoder=answered_by[1]), tokens,
                                model=model)
    ask_twice(p)
    assert len(search.args) == 2
    assert [req.encoder for (req,) in search.args] == [answered_by[1]] * 2
    assert (p.cache.stats()["entries"], p.cache.stats()["hit"]) == (0, 0)
