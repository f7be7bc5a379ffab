"""The search stage's collection rules, over a fake Milvus client (no server): the default
collection is created by its first write and reads as empty before; other collections must exist."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from deployments.config import MilvusConfig, SearchConfig
from deployments.errors import NotFoundError
from deployments.search import deployment
from deployments.search.store import REQUIRED_FIELDS
from deployments.search.versions import VERSIONS_COLLECTION


class FakeMilvus:
    """Collections by name; rows are not kept (only the calls matter here)."""

    def __init__(self) -> None:
        self.collections: set[str] = set()
        self.created: list[str] = []
        self.upserts: list[tuple[str, int]] = []
        self.missing: list[str] = []  # calls made to a collection that did not exist (Milvus raises)

    def _exists(self, name: str) -> None:
        if name not in self.collections:
            self.missing.append(name)
            raise RuntimeError(f"collection {name!r} does not exist")

    def has_collection(self, name: str, **_: Any) -> bool:
        return name in self.collections

    def create_collection(self, name: str, **_: Any) -> None:
        self.collections.add(name)
        self.created.append(name)

    def describe_collection(self, name: str, **_: Any) -> dict[str, Any]:
        return {"fields": [{"name": f, "params": {"dim": 3} if f == "dense" else {}} for f in REQUIRED_FIELDS]}

    def load_collection(self, name: str, **_: Any) -> None:
        assert name in self.collections

    def query(self, name: str, **_: Any) -> list[dict[str, Any]]:
        assert name in self.collections
        return []

    def upsert(self, name: str, rows: list[dict[str, Any]], **_: Any) -> None:
        self._exists(name)
        self.upserts.append((name, len(rows)))

    def delete(self, name: str, **_: Any) -> None:
        self._exists(name)

    def flush(self, *args: Any, **_: Any) -> None:
        pass


@pytest.fixture
def searcher(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, FakeMilvus]:
    fake = FakeMilvus()
    monkeypatch.setattr(deployment, "connect", lambda cfg: fake)
    cls = deployment.Searcher.func_or_class
    return cls(SearchConfig(milvus=MilvusConfig(collection="main"))), fake


def test_default_collection_reads_empty_then_is_created_by_the_first_write(searcher) -> None:
    s, fake = searcher
    assert asyncio.run(s.document_state(None, "doc-1")) == {}
    assert fake.created == []  # reading created nothing (the vector size is not known yet)
    rows = [{"id": "c0", "doc_id": "doc-1", "dense": [0.1, 0.2, 0.3]}]
    asyncio.run(s.replace_document(None, "doc-1", rows, []))
    # The document, then the collection's new version token (the retrieval cache's, versions.py),
    # whose collection is made before its first use: no call fails (pymilvus would log an ERROR).
    assert fake.created == ["main", VERSIONS_COLLECTION] and fake.upserts == [("main", 1), (VERSIONS_COLLECTION, 1)]
    assert fake.missing == []


def test_other_collections_must_exist(searcher) -> None:
    s, fake = searcher
    with pytest.raises(NotFoundError):
        asyncio.run(s.document_state("tenant_a", "doc-1"))
    with pytest.raises(NotFoundError):
        asyncio.run(s.replace_document("tenant_a", "doc-1", [{"id": "c0", "dense": [0.0] * 3}], []))
    assert fake.created == [] and fake.upserts == []
    assert asyncio.run(s.create_collection("tenant_a", 3)) is True
    assert asyncio.run(s.document_state("tenant_a", "doc-1")) == {}
