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
