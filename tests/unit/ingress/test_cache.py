"""The retrieval cache's bookkeeping: keys, version tokens, bounds (no Milvus: tokens come from a dict).

Whether a write is ever followed by a stale hit through the real stack is
tests/integration/test_retrieval_cache.py; this checks the rules it relies on.
"""

from __future__ import annotations

import asyncio

import pytest

from deployments.config import parse_app_config
from deployments.ingress.cache import RetrievalCache, config_fingerprint, entry_size
from deployments.protocol.stages import Hit, PreparedQuery, SearchResult
from deployments.protocol.types import Filter

Q = PreparedQuery(text="what is e-4471", tokens=("e", "4471"), language="en")


def result(text: str = "passage", n: int = 1) -> SearchResult:
    hits = tuple(Hit(id=f"d#{i}", doc_id="d", source="s.md", chunk_index=i, text=text, score=1.0) for i in range(n))
    return SearchResult(hits=hits, mode="hybrid")


class Tokens:
    """Version tokens by collection; a collection in ``failing`` raises (Milvus unreachable)."""

    def __init__(self, **tokens: str) -> None:
        self.tokens, self.failing = dict(tokens), set()

    def read(self, collection: str) -> str | None:
        if collection in self.failing:
            raise ConnectionError("milvus down")
        return self.tokens.get(collection)


def cache(tokens: Tokens | None = None, **bounds: int) -> RetrievalCache:
    return RetrievalCache(parse_app_config({"search": {"cache": bounds}}), tokens or Tokens(kb="t1"))


def key(c: RetrievalCache, **change) -> tuple:
    args = {"text": "what is e-4471", "collection": "kb", "acl": None, "flt": None, "mode": "hybrid", "top_k": 4}
    return c.key(**{**args, **change})


def test_a_hit_needs_the_same_key_and_the_token_it_was_stored_under() -> None:
    c = cache()
    token = asyncio.run(c.token("kb"))
    assert token == "t1" and c.get(key(c), token) is None
    c.put(key(c), token, Q, result())
    hit = c.get(key(c), token)
    assert hit is not None and hit.result == result() and hit.prepared == Q
    # A write replaced the token: the entry is not served (and is replaced by the next fill).
    assert c.get(key(c), "t2") is None
    assert c.stats() | {"bytes": 0} == {"hit": 1, "miss": 2, "bypass": 0, "entries": 1, "bytes": 0}


@pytest.mark.parametrize("change", [
    {"text": "what is e-4472"}, {"collection": "acme__kb"}, {"acl": ("eng",)}, {"acl": ()},
    {"flt": Filter(tags_any=["x"])}, {"mode": "dense"}, {"top_k": 5}])
def test_everything_that_changes_the_answer_is_in_the_key(change: dict) -> None:
    """Another tenant's collection, other groups (none at all included), another filter, mode or
    top_k never read an entry stored for the first."""
    c = cache()
    c.put(key(c), "t1", Q, result())
    assert c.get(key(c, **change), "t1") is None
    assert c.get(key(c), "t1") is not None


def test_the_config_that_shapes_retrieval_is_in_the_key() -> None:
    base = parse_app_config({})
    assert config_fingerprint(base) == config_fingerprint(parse_app_config({"search": {"cache": {"max_entries": 9}}}))
    for change in ({"search": {"precision": {"exact_terms": False}}}, {"search": {"rrf_k": 10}},
                   {"preprocess": {"stem": False}}, {"encoder": {"model": "other"}}):
        assert config_fingerprint(parse_app_config(change)) != config_fingerprint(base), change


def test_no_token_means_no_cache() -> None:
    """A collection without a token (a write in flight) or a failed read: nothing served or kept."""
    tokens = Tokens(kb="t1")
    c = cache(tokens)
    c.put(key(c), "t1", Q, result())
    tokens.tokens.pop("kb")
    assert asyncio.run(c.token("kb")) is None
    tokens.failing.add("kb")
    assert asyncio.run(c.token("kb")) is None
    assert c.get(key(c), None) is None
    assert c.stats()["bypass"] == 1 and c.stats()["hit"] == 0


def test_entries_are_bounded_least_recently_used_first() -> None:
    c = cache(max_entries=2)
    for q in ("a", "b"):
        c.put(key(c, text=q), "t1", Q, result())
    assert c.get(key(c, text="a"), "t1") is not None  # "a" is now the most recent
    c.put(key(c, text="c"), "t1", Q, result())
    assert [k[0] for k in c.entries] == ["a", "c"]


def test_bytes_are_bounded() -> None:
    one = entry_size(Q, result("x" * 1000))
    c = cache(max_bytes=2 * one + 10)
    for q in ("a", "b", "c"):
        c.put(key(c, text=q), "t1", Q, result("x" * 1000))
    assert [k[0] for k in c.entries] == ["b", "c"] and c.bytes == 2 * one
    c.put(key(c, text="big"), "t1", Q, result("x" * 5000))  # larger than the whole budget: not kept
    assert [k[0] for k in c.entries] == ["b", "c"]
    c.put(key(c, text="b"), "t2", Q, result("x" * 10))  # a refill replaces the entry, and its size
    assert c.bytes == one + entry_size(Q, result("x" * 10))


def test_sizes_grow_with_the_passages() -> None:
    assert entry_size(Q, result("x" * 2000, n=4)) > entry_size(Q, result("x" * 100, n=4)) > \
        entry_size(Q, result("x" * 100, n=1)) > 0
