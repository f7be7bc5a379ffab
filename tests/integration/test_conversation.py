"""Retrieval follows a conversation: a follow-up is searched with what it refers to."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration
HISTORY = [{"role": "user", "content": "What should I do about Nimbus Vault error E-4471?"},
           {"role": "assistant", "content": "The appliance rebuilds the shard from parity."}]
FOLLOW_UP = "How is it cleared?"


def top_source(stack, condense: str) -> tuple[str, dict]:
    r = stack.client.post("/v1/retrieve", json={"question": FOLLOW_UP, "history": HISTORY, "condense": condense,
                                                "top_k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    return body["sources"][0]["source"].rsplit("/", 1)[-1], body["search_query"]


def test_join_searches_the_earlier_turns_too(stack) -> None:
    source, query = top_source(stack, "join")
    assert query == {"text": f"{HISTORY[0]['content']} {FOLLOW_UP}", "mode": "join"}
    assert source == "nimbus_vault_error_codes.md"


def test_last_searches_the_question_alone(stack) -> None:
    _, query = top_source(stack, "last")
    assert query == {"text": FOLLOW_UP, "mode": "last"}


def test_rewrite_asks_the_generator_and_says_how_it_searched(stack) -> None:
    source, query = top_source(stack, "rewrite")
    assert query["mode"] in ("rewrite", "join") and query["text"].strip()
    if query["mode"] == "rewrite":
        assert query["text"] != FOLLOW_UP


def test_chat_follow_up_is_retrieved_from_the_conversation(stack) -> None:
    msgs = [*HISTORY, {"role": "user", "content": FOLLOW_UP}]
    r = stack.client.post("/v1/chat/completions", json={"messages": msgs, "max_tokens": 24, "condense": "join"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["search_query"]["mode"] == "join"
    assert body["sources"][0]["source"].endswith("nimbus_vault_error_codes.md")


def test_query_takes_history(stack) -> None:
    r = stack.client.post("/v1/query", json={"question": FOLLOW_UP, "history": HISTORY, "condense": "join",
                                             "max_tokens": 24})
    assert r.status_code == 200, r.text
    assert r.json()["sources"][0]["source"].endswith("nimbus_vault_error_codes.md")
