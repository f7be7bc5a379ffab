"""The search deployment: owns a pymilvus client; searches and writes chunk collections."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ray import serve

from deployments import metrics
from deployments.config import SearchConfig
from deployments.errors import DependencyUnavailableError, InvalidRequestError, NotFoundError, RagServeError
from deployments.protocol.stages import SearchRequest, SearchResult
from deployments.protocol.types import encoded_collection, is_default_collection, split_encoded
from deployments.search import precision
from deployments.search.store import ChunkStore, connect, list_collections, milvus_errors, not_loaded

log = logging.getLogger(__name__)
T = TypeVar("T")


@serve.deployment(name="search")
class Searcher:
    """Hybrid retrieval over Milvus collections, and the writes of ``/v1/documents``.

    The client is opened lazily and re-opened after a failure, so a replica starts (and stays
    healthy) while Milvus is down: requests then fail fast with 503 instead of the replica
    crash-looping, and recover by themselves once Milvus is back. One client serves every
    collection; a :class:`ChunkStore` per collection is kept once its collection is loaded.
    """

    def __init__(self, cfg: SearchConfig) -> None:
        self.cfg = cfg
        self._client: Any = None
        self._stores: dict[str, ChunkStore] = {}
        self._lock = threading.RLock()  # pymilvus is blocking: calls run in worker threads

    # ------------------------------------------------------------------ plumbing
    def _connected(self) -> Any:
        """The Milvus client, opened on first use (and again after a failure forgot it)."""
        with self._lock:
            if self._client is None:
                self._client = connect(self.cfg.milvus)
            return self._client

    def _store(self, collection: str | None, dim: int = 0, create: bool | None = None, encoder: str = "") -> ChunkStore:
        """The loaded store of ``encoder``'s copy of ``collection``. Only a default collection (the
        server's, or a tenant's) is created on first use (so a fresh deployment answers with no hits
        and takes its first documents); others must be created explicitly. Creating needs ``dim``."""
        name = encoded_collection(collection or self.cfg.milvus.collection, encoder)
        with self._lock:
            store = self._stores.get(name)
            if store is None or (dim and store.dim != dim):
                store = ChunkStore(self._connected(), self.cfg, dim, name)
                default = is_default_collection(name, self.cfg.milvus.collection)
                store.ensure_collection(create=default if create is None else create)
                self._stores[name] = store
            return store

    async def _run(self, op: str, fn: Callable[[], T]) -> T:
        """Run a blocking Milvus call in a thread; forget the client when Milvus is unreachable."""
        start = time.perf_counter()
        try:
            return await asyncio.to_thread(fn)
        except DependencyUnavailableError:
            with self._lock:
                self._client, self._stores = None, {}  # reconnect on the next call
            raise
        except NotFoundError:
            with self._lock:
                self._stores = {}  # a collection was dropped: look again on the next call
            raise
        finally:
            metrics.observe("rag_search_milvus_seconds", time.perf_counter() - start, op=op)

    # ------------------------------------------------------------------ search
    async def search(self, req: SearchRequest) -> SearchResult:
        """Return the ``top_k`` best live chunks of a collection for a prepared query and its vector.

        Raises:
            InvalidRequestError: ``top_k`` above the configured ``max_top_k``.
            NotFoundError: the named collection does not exist.
            DependencyUnavailableError / DependencyTimeoutError: Milvus is down or slow.
        """
        with metrics.stage_call("search"):
            if req.top_k > self.cfg.max_top_k:
                raise InvalidRequestError(f"top_k must be <= {self.cfg.max_top_k}", param="top_k")
            mode = req.mode or self.cfg.mode
            # A hybrid request is reordered for precision even when served lexically (a language
            # the encoder does not know): twins are as common in Chinese as in English.
            reorder = precision.applies(mode, self.cfg.precision)
            if mode == "hybrid" and req.query.language not in self.cfg.dense_languages:
                mode = "lexical"  # the response's `mode` says so
            fetch = max(req.top_k, self.cfg.precision.candidates) if reorder else req.top_k

            def run() -> SearchResult:
                store = self._store(req.collection, len(req.vector), encoder=req.encoder)
                if store.encoder_tag is not None and store.encoder_tag != req.encoder:
                    # Never rank passages of one encoder with a question vector of another.
                    raise RagServeError(f"collection {store.name!r} holds passages of encoder "
                                        f"{store.encoder_tag or 'untuned'!r}, the question was embedded by "
                                        f"{req.encoder or 'untuned'!r}")
                try:
                    hits = store.search(req.vector, req.query.lexical_text, fetch, mode, req.filter, req.acl)
                except DependencyUnavailableError as e:
                    if not not_loaded(e):
                        raise
                    # A restarted Milvus brings its collections back released: load and ask again.
                    store.ensure_collection(create=False)
                    hits = store.search(req.vector, req.query.lexical_text, fetch, mode, req.filter, req.acl)
                if reorder:
                    hits = precision.reorder(hits, req.query.key_terms, self.cfg.precision, self.cfg.rrf_k)
                return SearchResult(hits=tuple(hits[: req.top_k]), mode=mode)  # type: ignore[arg-type]

            result = await self._run("search", run)
            metrics.observe("rag_search_hits", len(result.hits), mode=mode)
            return result

    # ------------------------------------------------------------------ documents
    async def document_state(self, collection: str | None, doc_id: str, encoder: str = "") -> dict[str, str]:
        """``{chunk id: version}`` of a stored document in ``encoder``'s copy (empty when absent,
        also when the default collection does not exist yet: the first write creates it)."""
        def run() -> dict[str, str]:
            try:
                return self._store(collection, create=False, encoder=encoder).document_state(doc_id)
            except NotFoundError:
                if not is_default_collection(collection or self.cfg.milvus.collection, self.cfg.milvus.collection):
                    raise
                return {}

        return await self._run("query", run)

    async def replace_document(self, collection: str | None, doc_id: str, rows: list[dict[str, Any]],
                               old_ids: list[str], encoder: str = "") -> None:
        """Write a document version into ``encoder``'s copy in one request (``ChunkStore.replace_document``)."""
        dim = len(rows[0]["dense"]) if rows else 0
        await self._run("upsert", lambda: self._store(collection, dim, encoder=encoder).replace_document(
            doc_id, rows, old_ids))

    async def delete_document(self, collection: str | None, doc_id: str, encoder: str = "") -> int:
        """Delete a document's chunks from ``encoder``'s copy; returns how many were deleted."""
        return await self._run("delete", lambda: self._store(collection, create=False, encoder=encoder)
                               .delete_document(doc_id))

    # ------------------------------------------------------------------ collections
    async def collections(self) -> list[dict[str, Any]]:
        """Every ragserve collection with its row count."""
        return await self._run("list", lambda: list_collections(self._connected(), self.cfg.milvus.timeout_s))

    async def create_collection(self, name: str, dim: int, encoder: str = "") -> bool:
        """Create (and load) ``encoder``'s copy of a collection; returns False when it already existed."""
        def run() -> bool:
            store = ChunkStore(self._connected(), self.cfg, dim, encoded_collection(name, encoder))
            created = store.ensure_collection(create=True)
            with self._lock:
                self._stores[store.name] = store  # keyed by the copy, as _store looks it up
            return created

        return await self._run("create", run)

    async def drop_collection(self, name: str) -> bool:
        """Drop a collection, every encoder's copy of it; returns False when there was none."""
        def run() -> bool:
            client = self._connected()
            with milvus_errors("list collections", self.cfg.milvus.timeout_s):
                found = [c for c in client.list_collections(timeout=self.cfg.milvus.timeout_s)
                         if split_encoded(c)[0] == name]
            with self._lock:
                for copy in found:
                    self._stores.pop(copy, None)
            return any([ChunkStore(client, self.cfg, 0, copy).drop() for copy in found])

        return await self._run("drop", run)

    async def ready(self) -> dict[str, int | str]:
        """Whether Milvus answers: the default collection's name and row count (for /readyz)."""
        rows = await self._run("stats", lambda: ChunkStore(self._connected(), self.cfg, 0).stored_rows())
        return {"collection": self.cfg.milvus.collection, "rows": rows}
