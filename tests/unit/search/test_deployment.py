"""The search deployment's use of ``search.precision``: a hybrid request fetches the configured
candidates, reorders them and returns ``top_k``; dense and lexical requests get the store's
ranking as it comes (over a fake store: no Milvus)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from deployments.config import MilvusConfig, PrecisionConfig, SearchConfig
from deployments.protocol.stages import Hit, PreparedQuery, SearchRequest
from deployments.search import deployment


def hit(doc: str, text: str) -> Hit:
    return Hit(id=f"{doc}#0", doc_id=doc, source=doc, chunk_index=0, text=text, score=1.0)


#: The store's ranking: the 3.4.0 notes first (as BM25 and the encoder would have it).
RANKED = [hit("r340", "Release 3.4.0 adds MQTT."), hit("other", "Unrelated."), hit("r341", "Release 3.4.1 fixes MQTT.")]


class FakeStore:
    """Returns :data:`RANKED` cut to the asked limit; records each search's limit and mode."""

    calls: list[tuple[int, str]] = []
    names: list[str] = []
    recorded: str | None = None  # the encoder tag the copy records (None: not recorded)

    def __init__(self, client: Any, cfg: SearchConfig, dim: int, name: str | None = None) -> None:
        self.dim, self.name, self.encoder_tag = dim, name, FakeStore.recorded
        FakeStore.names.append(name)

    def ensure_collection(self, create: bool = True) -> bool:
        return False

    def search(self, vector: Any, lexical: str, top_k: int, mode: str, flt: Any = None, acl: Any = None) -> list[Hit]:
        FakeStore.calls.append((top_k, mode))
        return RANKED[:top_k]


def searcher(monkeypatch: pytest.MonkeyPatch, precision: PrecisionConfig) -> Any:
    monkeypatch.setattr(deployment, "connect", lambda cfg: object())
    monkeypatch.setattr(deployment, "ChunkStore", FakeStore)
    FakeStore.calls, FakeStore.names, FakeStore.recorded = [], [], None
    cfg = SearchConfig(milvus=MilvusConfig(collection="main"), precision=precision)
    return deployment.Searcher.func_or_class(cfg)


def request(mode: str, top_k: int = 2, language: str = "en") -> SearchRequest:
    q = PreparedQuery(text="What does 3.4.1 fix in MQTT?", tokens=("3", "4", "1", "fix", "mqtt"),
                      language=language, key_terms=("3.4.1",))  # type: ignore[arg-type]
    return SearchRequest(query=q, vector=(0.1, 0.2, 0.3), top_k=top_k, mode=mode)  # type: ignore[arg-type]


def test_hybrid_fetches_the_candidates_and_returns_top_k_reordered(monkeypatch: pytest.MonkeyPatch) -> None:
    s = searcher(monkeypatch, PrecisionConfig(candidates=3))
    res = asyncio.run(s.search(request("hybrid")))
    assert FakeStore.calls == [(3, "hybrid")]
    assert [h.doc_id for h in res.hits] == ["r341", "r340"] and res.mode == "hybrid"


def test_a_hybrid_request_served_lexically_is_reordered_too(monkeypatch: pytest.MonkeyPatch) -> None:
    s = searcher(monkeypatch, PrecisionConfig(candidates=3))
    s.cfg = s.cfg.model_copy(update={"dense_languages": ("en",)})
    res = asyncio.run(s.search(request("hybrid", language="zh")))
    assert FakeStore.calls == [(3, "lexical")] and res.mode == "lexical"
    assert res.hits[0].doc_id == "r341"


@pytest.mark.parametrize("mode", ["dense", "lexical"])
def test_single_retrievers_are_not_reordered(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    s = searcher(monkeypatch, PrecisionConfig(candidates=3))
    res = asyncio.run(s.search(request(mode)))
    assert FakeStore.calls == [(2, mode)]
    assert [h.doc_id for h in res.hits] == ["r340", "other"]


def test_both_features_off_is_the_fusion_as_it_comes(monkeypatch: pytest.MonkeyPatch) -> None:
    s = searcher(monkeypatch, PrecisionConfig(exact_terms=False, prefer_newest="off", candidates=3))
    res = asyncio.run(s.search(request("hybrid")))
    assert FakeStore.calls == [(2, "hybrid")]
    assert [h.doc_id for h in res.hits] == ["r340", "other"]


def test_a_vector_is_searched_in_its_own_encoders_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    s = searcher(monkeypatch, PrecisionConfig())
    tag = "0123456789abcdef"
    FakeStore.recorded = tag
    asyncio.run(s.search(request("dense").model_copy(update={"collection": "acme__kb", "encoder": tag})))
    assert FakeStore.names == [f"acme__kb__enc_{tag}"]


def test_a_copy_recording_another_encoder_is_never_searched(monkeypatch: pytest.MonkeyPatch) -> None:
    from deployments.errors import RagServeError

    s = searcher(monkeypatch, PrecisionConfig())
    FakeStore.recorded = "fedcba9876543210"
    with pytest.raises(RagServeError, match="holds passages of encoder 'fedcba9876543210'") as err:
        asyncio.run(s.search(request("dense").model_copy(update={"encoder": "0123456789abcdef"})))
    assert err.value.status == 500 and FakeStore.calls == []


def test_a_tuned_copy_created_here_is_not_served_to_the_untuned_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """create_collection caches the store under the copy's name: an untuned search of the same
    collection afterwards opens the untuned copy, not the tuned one just created."""
    s = searcher(monkeypatch, PrecisionConfig())
    tag = "0123456789abcdef"
    FakeStore.recorded = tag
    asyncio.run(s.create_collection("kb", 3, encoder=tag))
    FakeStore.recorded = None
    asyncio.run(s.search(request("dense").model_copy(update={"collection": "kb"})))
    assert FakeStore.names == [f"kb__enc_{tag}", "kb"]
    asyncio.run(s.search(request("dense").model_copy(update={"collection": "kb", "encoder": tag})))
    assert FakeStore.names == [f"kb__enc_{tag}", "kb"]  # the tuned copy's store was kept and reused


def test_a_collection_released_by_a_milvus_restart_is_loaded_again_and_searched(monkeypatch: pytest.MonkeyPatch) -> None:
    """Milvus brings its collections back released after a restart: the search loads the
    collection and asks again instead of answering 503; any other failure stays a 503."""
    from deployments.errors import DependencyUnavailableError

    s = searcher(monkeypatch, PrecisionConfig())
    loads: list[bool] = []
    failures = [DependencyUnavailableError("Milvus search failed: Collection 'kb' is in state 'released'; "
                                           "call load() before search/get/query")]

    def search(self, *args: Any, **kw: Any) -> list[Hit]:
        if failures:
            raise failures.pop()
        return RANKED[:2]

    monkeypatch.setattr(FakeStore, "search", search)
    monkeypatch.setattr(FakeStore, "ensure_collection", lambda self, create=True: loads.append(create) or False)
    res = asyncio.run(s.search(request("dense")))
    assert [h.doc_id for h in res.hits] == ["r340", "other"] and loads[-1] is False
    failures.append(DependencyUnavailableError("Milvus search failed: gRPC UNAVAILABLE"))
    with pytest.raises(DependencyUnavailableError):
        asyncio.run(s.search(request("dense")))
