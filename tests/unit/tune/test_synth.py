"""Synthetic questions and mined negatives, against a scripted stand-in for the HTTP API (the
real server is exercised by tests/integration/test_tune.py)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from deployments.tune import synth
from deployments.tune.data import Chunk, Labelled

CHUNKS = [Chunk(id="c1", doc_id="pump", text="The VX-220 pump delivers 38 m3/h at 42 metres of head."),
          Chunk(id="c2", doc_id="pump", text="The VX-220 casing is grey cast iron."),
          Chunk(id="c3", doc_id="fan", text="The AX-9 fan moves 900 m3/h."),
          Chunk(id="c4", doc_id="tea", text="翠岚坪茶园位于海拔一千二百米。")]


@pytest.mark.parametrize("text, question", [
    ("What head does the VX-220 reach?", "What head does the VX-220 reach?"),
    ("Question: What head does the VX-220 reach?\nIt reaches 42 metres.", "What head does the VX-220 reach?"),
    ('1. "How much water does the VX-220 move?"', "How much water does the VX-220 move?"),
    ("The VX-220 reaches 42 metres.", None),  # not a question
    ("Why?", None),  # too short to search with
    ("", None),
])
def test_the_question_is_taken_from_the_generation(text: str, question: str | None) -> None:
    assert synth.clean_question(text) == question


def test_only_chunks_in_the_encoders_languages_are_sampled_and_the_sample_is_seeded() -> None:
    opts = synth.SynthOptions(languages=("en",), max_chunks=2, seed=3)
    got = synth.sample_chunks(CHUNKS, opts)
    assert len(got) == 2 and all(c.doc_id != "tea" for c in got)
    assert got == synth.sample_chunks(CHUNKS, opts)


def server(generations: dict[str, str], lexical: dict[str, list[str]], dense: dict[str, list[str]]):
    """/v1/generate answers by the chunk named in the prompt; /v1/retrieve ranks by the question."""
    by_id = {c.id: c for c in CHUNKS}
    seen: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        if request.url.path == "/v1/generate":
            cid = next(c.id for c in CHUNKS if c.text in body["prompt"])
            return httpx.Response(200, json={"text": generations[cid]})
        ranked = (lexical if body["mode"] == "lexical" else dense).get(body["question"], [])
        return httpx.Response(200, json={"sources": [
            {"id": i, "doc_id": by_id[i].doc_id, "text": by_id[i].text} for i in ranked[: body["top_k"]]]})

    return httpx.MockTransport(handler), seen


def build(transport, labelled=(), synthetic=True, **opts):
    async def go():
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await synth.build_pairs(client, "kb", CHUNKS, list(labelled), synthetic,
                                           synth.SynthOptions(per_chunk=1, languages=("en",), **opts))

    return asyncio.run(go())


def test_a_synthetic_question_is_kept_only_when_lexical_search_finds_its_own_chunk() -> None:
    q1, q2, q3 = "How much does the VX-220 deliver?", "What is the VX-220 casing made of?", "What does the AX-9 move?"
    transport, seen = server({"c1": q1, "c2": q2, "c3": q3},
                             lexical={q1: ["c1", "c3"], q2: ["c1", "c3"], q3: ["c3"]},  # q2's own chunk is missing
                             dense={q1: ["c2", "c3", "c1"], q3: ["c1", "c3", "c2"]})
    pairs, stats = build(transport, keep_top_k=5, negatives=2)
    assert [(p.question, p.positive) for p in pairs] == [(q1, "c1"), (q3, "c3")]
    # negatives: other documents only (c2 is the same document as c1), in the encoder's order
    assert pairs[0].negatives == ("c3",) and pairs[1].negatives == ("c1", "c2")
    assert stats["synthetic"] == {"chunks": 3, "generated": 3, "questions": 3, "roundtrip_kept": 2, "pairs": 2}
    assert all(b["collection"] == "kb" for b in seen if "mode" in b)
    gens = [b for b in seen if "prompt" in b]
    assert len({b["seed"] for b in gens}) == 3  # a different, stable seed per chunk


def test_a_labelled_question_gets_its_documents_best_chunk_as_positive() -> None:
    q = "Which pump has a cast iron casing?"
    transport, _ = server({}, lexical={}, dense={q: ["c3", "c2", "c1"], "What about tea?": ["c3"]})
    pairs, stats = build(transport, labelled=[Labelled(question=q, doc_id="pump"),
                                              Labelled(question="What about tea?", doc_id="tea")], synthetic=False)
    assert [(p.positive, p.negatives, p.origin) for p in pairs] == [("c2", ("c3",), "labelled")]
    assert stats["labelled"] == {"given": 2, "kept": 1}  # tea's document was not in the encoder's ranking
