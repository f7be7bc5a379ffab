"""The server fits its own prompt into the model's context: a valid question is never a 400.

Long Chinese passages cost SmolLM2's tokenizer about one token per character, so a Chinese
question with ``top_k`` at its maximum retrieves far more text than the 2048-token context
holds (checked below with the engine's own tokenizer). The generator packs the best passages
that fit and says which went in; only the caller's own over-long input is rejected, naming it.
"""

from __future__ import annotations

import functools
import json

import pytest

from deployments.client import iter_sse
from deployments import models
from deployments.generator import prompt
from deployments.protocol.stages import Hit

pytestmark = pytest.mark.integration
COLL = "it_packing"
SENTENCES = [
    "青禾湾灌溉站第{n}号泵房负责东侧梯田的供水，设计流量为每小时{m}立方米。",
    "泵房在夜间低谷电价时段自动启动，把水送入山顶的调蓄池，白天再依靠重力向田间配水。",
    "每个轮灌组配有压力传感器和电磁阀，控制器根据土壤湿度读数决定开阀时间，误差不超过五分钟。",
    "当管网压力低于零点八兆帕时，系统会先关闭最远端的支管，再向值班员的手机发送告警短信。",
    "维护手册要求每季度清洗一次过滤器，并在雨季前检查调蓄池的溢流口是否被落叶堵塞。",
    "第{n}号泵房的备用柴油机每月试运行一次，每次不少于十五分钟，试运行记录保存在站内台账中。",
    "茶园区域采用滴灌，果园区域采用微喷，两种方式的灌水定额分别按作物需水量单独计算。",
    "冬季停灌期间需要排空地表管道，防止夜间结冰胀裂，阀门井盖也要加装保温层。",
]


def chinese_document(n: int) -> str:
    """About a thousand characters of ordinary Chinese prose about one pumping station."""
    lines = [s.format(n=n, m=40 + 5 * n) for s in SENTENCES]
    return "".join(lines[i % len(lines)] for i in range(len(lines) * 3))


@pytest.fixture(scope="module")
def collection(stack) -> str:
    r = stack.client.post("/v1/collections", json={"name": COLL})
    assert r.status_code in (200, 201), r.text
    docs = [{"id": f"pump-{n}", "title": f"青禾湾灌溉站第{n}号泵房", "text": chinese_document(n)} for n in range(1, 7)]
    r = stack.client.post("/v1/documents", json={"collection": COLL, "documents": docs})
    assert r.status_code == 200, r.text
    yield COLL
    stack.client.delete(f"/v1/collections/{COLL}")


@functools.cache
def tokenizer(model: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(models.resolve(model))


def unpacked_prompt_tokens(stack, question: str, sources: list[dict]) -> int:
    """Tokens the prompt would have with every retrieved passage (the engine's own tokenizer)."""
    tok = tokenizer(stack.cfg.generator.model)
    g = stack.cfg.generator
    hits = [Hit(**{k: v for k, v in s.items() if k != "n"}) for s in sources]
    msgs = prompt.rag_messages(g.system_prompt, question, hits, g.passage_chars)
    text = tok.apply_chat_template([m.model_dump() for m in msgs], add_generation_prompt=True, tokenize=False)
    return len(tok.encode(text, add_special_tokens=False))


QUESTION = "青禾湾灌溉站的泵房在什么时段自动启动？"


def test_chinese_question_with_top_k_at_its_maximum_is_answered(stack, collection: str) -> None:
    top_k = stack.cfg.search.max_top_k
    r = stack.client.post("/v1/query", json={"question": QUESTION, "collection": collection, "top_k": top_k,
                                             "max_tokens": 48})
    assert r.status_code == 200, r.text
    body = r.json()
    ctx, n_sources = body["context"], len(body["sources"])
    # The retrieved text really is larger than the context window...
    limit = stack.cfg.generator.max_model_len
    assert unpacked_prompt_tokens(stack, QUESTION, body["sources"]) + 48 > limit
    # ...and what went in fits, best first, with every source accounted for.
    assert ctx["dropped"], ctx
    assert ctx["sources"] == list(range(1, len(ctx["sources"]) + 1)) and ctx["sources"]
    assert ctx["dropped"] == list(range(len(ctx["sources"]) + 1, n_sources + 1))
    assert set(ctx["trimmed"]) <= set(ctx["sources"][-1:])
    assert ctx["prompt_tokens"] + ctx["max_tokens"] <= limit and ctx["max_tokens"] == 48
    assert body["usage"]["prompt_tokens"] == ctx["prompt_tokens"]
    assert body["answer"].strip()
    assert all(c in ctx["sources"] for c in body["cited"])


def test_streamed_answer_says_which_sources_went_in(stack, collection: str) -> None:
    with stack.client.stream("POST", "/v1/query", json={"question": QUESTION, "collection": collection,
                                                        "top_k": stack.cfg.search.max_top_k, "max_tokens": 16,
                                                        "stream": True}) as r:
        assert r.status_code == 200
        events = list(iter_sse(r.iter_lines()))
    first = json.loads(events[0][1])
    assert events[0][0] == "sources" and first["context"]["dropped"]
    assert len(first["context"]["sources"]) + len(first["context"]["dropped"]) == len(first["sources"])
    assert events[-1][0] == "done"


def long_question(stack, room: int) -> str:
    """The longest prefix of a long Chinese text whose bare prompt (no passages) leaves ``room``
    tokens of the context, measured with the engine's own tokenizer: how many tokens a Chinese
    character costs is the tokenizer's business, not this test's."""
    text = "请详细说明" + chinese_document(1) * 2
    target = stack.cfg.generator.max_model_len - room
    lo, hi = 1, min(len(text), stack.cfg.preprocess.max_query_chars)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if unpacked_prompt_tokens(stack, text[:mid], []) <= target else (lo, mid - 1)
    return text[:lo]


def test_a_long_question_gets_a_lowered_default_max_tokens_not_a_400(stack, collection: str) -> None:
    """A question that fills most of the context: the server's own default max_tokens is lowered
    to fit, and every source is dropped — never the user's fault."""
    question = long_question(stack, room=64)
    r = stack.client.post("/v1/query", json={"question": question, "collection": collection})
    assert r.status_code == 200, r.text
    ctx = r.json()["context"]
    assert 0 < ctx["max_tokens"] < stack.cfg.generator.sampling.max_tokens
    assert ctx["prompt_tokens"] + ctx["max_tokens"] <= stack.cfg.generator.max_model_len
    assert ctx["sources"] == [] and ctx["dropped"]


def test_the_users_own_over_long_input_is_a_400_naming_it(stack, collection: str) -> None:
    question = long_question(stack, room=64)
    r = stack.client.post("/v1/query", json={"question": question, "collection": collection, "max_tokens": 400})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "max_tokens" and "at most" in r.json()["error"]["message"]
    # A question that preprocess accepts but that alone overflows the model's context names itself.
    too_long = ("请详细说明" + chinese_document(1) * 2)[: stack.cfg.preprocess.max_query_chars]
    assert unpacked_prompt_tokens(stack, too_long, []) >= stack.cfg.generator.max_model_len
    r = stack.client.post("/v1/query", json={"question": too_long, "collection": collection})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "question" and "shorten" in r.json()["error"]["message"]
    history = [{"role": "user", "content": chinese_document(n)} for n in range(1, 4)]
    r = stack.client.post("/v1/query", json={"question": QUESTION, "collection": collection, "history": history,
                                             "condense": "last"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "history" and "shorten" in r.json()["error"]["message"]
