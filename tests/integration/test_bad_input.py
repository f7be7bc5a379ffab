"""Bad input gets a 4xx in the one error shape naming the problem; the server keeps serving."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration

CASES = [
    # (route, body, status, param or None, words in the message)
    ("/v1/query", {"question": ""}, 400, "question", "empty"),
    ("/v1/query", {"question": "   \t "}, 400, "question", "empty"),
    ("/v1/query", {"question": "x" * 2001}, 413, "question", "limit"),
    ("/v1/query", {"question": 5}, 400, "question", "string"),
    ("/v1/query", {"question": "hi", "top_k": "5"}, 400, "top_k", "integer"),
    ("/v1/query", {"question": "hi", "colour": "red"}, 400, "colour", "unknown field"),
    ("/v1/query", {"question": "hi", "temperature": 3}, 400, "temperature", "less than or equal"),
    ("/v1/query", {"question": "hi", "top_p": 0}, 400, "top_p", "greater than"),
    ("/v1/query", {"question": "hi", "max_tokens": 0}, 400, "max_tokens", "greater than"),
    ("/v1/query", {"question": "hi", "max_tokens": 5000}, 400, "max_tokens", "1024"),
    ("/v1/query", {}, 400, "question", "required"),
    ("/v1/retrieve", {"question": "pump", "top_k": 51}, 400, "top_k", "50"),
    ("/v1/retrieve", {"question": "pump", "mode": "fuzzy"}, 400, "mode", "hybrid"),
    ("/v1/generate", {"prompt": ""}, 400, "prompt", "empty"),
    # A seed the engine's generator cannot hold is the caller's input, refused before the engine.
    ("/v1/generate", {"prompt": "hi", "seed": 2**64, "max_tokens": 2}, 400, "seed", "less than or equal"),
    ("/v1/query", {"question": "hi", "top_k": 2.5}, 400, "top_k", "integer"),
    # The caller's own text is named: their prompt alone does not fit, or their max_tokens next to it.
    ("/v1/generate", {"prompt": "word " * 3000, "max_tokens": 64}, 400, "prompt", "shorten"),
    ("/v1/generate", {"prompt": "word " * 1500, "max_tokens": 1000}, 400, "max_tokens", "at most"),
    ("/v1/embeddings", {"input": []}, 400, "input", "non-empty"),
    ("/v1/embeddings", {"input": ["a"] * 257}, 413, "input", "256"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages", "at least 1"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "n": 5}, 400, "n", "4"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "frobnicate": 1}, 400, "frobnicate",
     "unknown field"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}, 400, "messages.0.content.0", "text only"),
    ("/v1/embeddings", {"input": [1, 2, 3]}, 400, "input", "token arrays"),
    ("/v1/embeddings", {"input": "a", "dimensions": 100}, 400, "dimensions", "384"),
    ("/v1/embeddings", {"input": "a", "model": "text-embedding-3-small"}, 404, "model", "/v1/models"),
    ("/v1/completions", {"prompt": [1, 2, 3]}, 400, "prompt", "token ids"),
    ("/v1/completions", {"prompt": "a", "suffix": "b"}, 400, "suffix", "not supported"),
    ("/v1/chat/completions", {"messages": [{"role": "assistant", "content": "hi"}]}, 400, "messages", "user"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages.0.role", "system"),
]


@pytest.mark.parametrize(("route", "body", "status", "param", "words"), CASES)
def test_bad_json_fields(stack, route: str, body: dict, status: int, param: str | None, words: str) -> None:
    r = stack.client.post(route, json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == status
    assert err["param"] == param and words.lower() in err["message"].lower(), err


@pytest.mark.parametrize(("content", "words"), [
    (b'{"question": "hi"', "not valid json"),
    (b'\xff\xfe{"question": "\xe9t\xe9"}', "not valid json"),
    (b'{"question": "caf\xe9"}', "not valid json"),
    (b"", "not valid json"),
    (b"[1, 2]", "object"),
])
def test_malformed_bodies(stack, content: bytes, words: str) -> None:
    r = stack.client.post("/v1/query", content=content, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]["message"].lower()


def test_integral_floats_are_integers(stack) -> None:
    # The document declares JSON Schema integers, which admit 2.0 (clients keeping numbers as doubles).
    r = stack.client.post("/v1/retrieve", json={"question": "error code E-4471", "top_k": 2.0})
    assert r.status_code == 200, r.text
    assert len(r.json()["sources"]) == 2


def test_oversized_body_is_413(stack) -> None:
    r = stack.client.post("/v1/retrieve", content=b'{"question": "' + b"a" * 1_100_000 + b'"}')
    assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"


def test_unknown_route_and_method(stack) -> None:
    r = stack.client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == 404
    r = stack.client.get("/v1/query")
    assert r.status_code == 405 and r.json()["error"]["code"] == 405


def test_still_serving_after_bad_input(stack) -> None:
    r = stack.client.post("/v1/retrieve", json={"question": "Quillmark line width"})
    assert r.status_code == 200 and r.json()["sources"]
