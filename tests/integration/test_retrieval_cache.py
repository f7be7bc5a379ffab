"""The retrieval cache on the real stack: a write is never followed by a stale hit.

Two ingress replicas with caches of their own (the app's, and a second ingress app over the same
stage replicas, as a second replica of the ingress would be) answer the same question; between
the reads, documents are written, replaced and deleted through one of them, and written straight
to Milvus as bulk ingestion does (``ingest_paths``: the ``ChunkStore`` writes that bulk
ingestion's write actors and ``ragserve ingest --local`` make, past the search stage). After every
write, both answer from the collection as written, while the cache's own counts show that the
repeated reads in between were hits.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.integration

COLLECTION = "it_cache"
QUESTION = "What colour is the zorblax beacon on the quay?"


def _doc(version: int) -> dict:
    return {"id": "zorblax", "source": "kb/zorblax.md", "title": "Zorblax beacon",
            "text": f"The zorblax beacon on the quay shows colour number {version}: revision {version} of its light."}


def _stats(app: str) -> dict[str, int]:
    from ray import serve

    name = "ingress" if app == "ragserve" else f"{app}_ingress"
    return serve.get_deployment_handle(name, app_name=app).retrieval_cache_stats.remote().result(timeout_s=30)


@pytest.fixture(scope="module")
def second(stack):
    """A second ingress (its own cache) over the running stages, under /second; and the collection."""
    from ray import serve

    from deployments import stages

    handles = {s.name: serve.get_deployment_handle(s.name, app_name="ragserve") for s in stages.enabled(stack.cfg)}
    opts = stages.INGRESS.config(stack.cfg).deployment.serve_options()
    app = stages.INGRESS.deployment_class().options(name="second_ingress", **opts).bind(handles, stack.cfg)
    serve.run(app, name="second", route_prefix="/second")
    r = stack.client.post("/v1/collections", json={"name": COLLECTION})
    assert r.status_code in (200, 201), r.text
    try:
        yield httpx.Client(base_url=f"{stack.url}/second", timeout=120)
    finally:
        stack.client.delete(f"/v1/collections/{COLLECTION}")
        serve.delete("second")


def _passages(client: httpx.Client) -> list[str]:
    r = client.post("/v1/retrieve", json={"question": QUESTION, "collection": COLLECTION, "top_k": 3})
    assert r.status_code == 200, r.text
    return [s["text"] for s in r.json()["sources"] if "zorblax" in s["text"]]


def _both_read(stack, second: httpx.Client, want: list[str]) -> None:
    """Each ingress answers ``want`` twice: the first read after a write must be fresh, the
    second is served by that ingress's cache (counted)."""
    for app, client in (("ragserve", stack.client), ("second", second)):
        hits = _stats(app)["hit"]
        assert _passages(client) == want, app
        assert _passages(client) == want, app
        assert _stats(app)["hit"] > hits, f"{app}: the repeated read was not a cache hit"


def _write(client: httpx.Client, doc: dict) -> None:
    r = client.post("/v1/documents", json={"collection": COLLECTION, "documents": [doc]})
    assert r.status_code == 200, r.text


def test_writes_through_either_ingress_are_never_followed_by_a_stale_hit(stack, second) -> None:
    from deployments.config import parse_app_config

    assert parse_app_config({}).search.cache.enabled, "the shipped default has the cache on"
    _write(stack.client, {"id": "filler", "text": "The harbour office opens at eight."})
    _both_read(stack, second, [])  # cached: no zorblax yet
    for version in range(1, 4):  # added, then replaced twice, alternating the writing ingress
        _write(stack.client if version % 2 else second, _doc(version))
        _both_read(stack, second, [_doc(version)["text"]])
    r = second.delete("/v1/documents/zorblax", params={"collection": COLLECTION})
    assert r.status_code == 200, r.text
    _both_read(stack, second, [])


def test_a_bulk_write_straight_to_milvus_retires_the_cached_answers(stack, second, tmp_path: Path) -> None:
    from deployments.encoder.model import Embedder
    from deployments.ingest.pipeline import ingest_paths
    from deployments.search.store import ChunkStore, connect

    _both_read(stack, second, [])
    doc = {**_doc(9), "text": _doc(9)["text"] + " Written by bulk ingestion."}
    (tmp_path / "bulk.jsonl").write_text(json.dumps(doc) + "\n", encoding="utf-8")
    cfg = stack.cfg
    embedder = Embedder(cfg.encoder)
    store = ChunkStore(connect(cfg.search.milvus), cfg.search, embedder.dim, cfg.stored_copy(COLLECTION))
    reports = ingest_paths([tmp_path / "bulk.jsonl"], store, embedder, cfg.ingest, cfg.preprocess)
    assert [r.status for r in reports] == ["added"], reports
    _both_read(stack, second, [doc["text"]])


def test_no_cache_requests_skip_the_cache(stack, second) -> None:
    before = _stats("ragserve")
    r = stack.client.post("/v1/retrieve", json={"question": QUESTION, "collection": COLLECTION},
                          headers={"Cache-Control": "no-cache"})
    assert r.status_code == 200, r.text
    after = _stats("ragserve")
    assert after["bypass"] == before["bypass"] + 1 and after["hit"] == before["hit"]
