"""The search deployment: owns a pymilvus client and answers typed search requests."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from ray import serve

from deployments import metrics
from deployments.config import SearchConfig
from deployments.errors import DependencyUnavailableError, InvalidRequestError
from deployments.protocol import SearchRequest, SearchResult
from deployments.search.store import ChunkStore, connect

log = logging.getLogger(__name__)


@serve.deployment(name="search")
class Searcher:
    """Hybrid retrieval over one Milvus collection.

    The client is opened lazily and re-opened after a failure, so a replica starts (and stays
    healthy) while Milvus is down: requests then fail fast with 503 instead of the replica
    crash-looping, and recover by themselves once Milvus is back.
    """

    def __init__(self, cfg: SearchConfig) -> None:
        self.cfg = cfg
        self._store: ChunkStore | None = None
        self._lock = threading.Lock()  # pymilvus is blocking: calls run in worker threads

    def _get_store(self, dim: int) -> ChunkStore:
        with self._lock:
            if self._store is None or self._store.dim != dim:
                # Reuse the open client if any (a readiness check may have opened it).
                client = self._store.client if self._store is not None else connect(self.cfg.milvus)
                store = ChunkStore(client, self.cfg, dim)
                store.ensure_collection()
                self._store = store
            return self._store

    def _forget_store(self) -> None:
        with self._lock:
            self._store = None  # reconnect on the next call

    def _search_blocking(self, req: SearchRequest, mode: str) -> SearchResult:
        store = self._get_store(len(req.vector))
        start = time.perf_counter()
        try:
            hits = store.search(req.vector, req.query.lexical_text, req.top_k, mode)
        except DependencyUnavailableError:
            self._forget_store()
            raise
        finally:
            metrics.observe("rag_search_milvus_seconds", time.perf_counter() - start, op="search")
        return SearchResult(hits=tuple(hits), mode=mode)  # type: ignore[arg-type]

    async def search(self, req: SearchRequest) -> SearchResult:
        """Return the ``top_k`` best chunks for a prepared query and its vector.

        Raises:
            InvalidRequestError: ``top_k`` above the configured ``max_top_k``.
            DependencyUnavailableError / DependencyTimeoutError: Milvus is down or slow.
        """
        with metrics.stage_call("search"):
            if req.top_k > self.cfg.max_top_k:
                raise InvalidRequestError(f"top_k must be <= {self.cfg.max_top_k}", param="top_k")
            mode = req.mode or self.cfg.mode
            result = await asyncio.to_thread(self._search_blocking, req, mode)
            metrics.observe("rag_search_hits", len(result.hits), mode=mode)
            return result

    async def ready(self) -> dict[str, int | str]:
        """Whether Milvus answers: the collection's name and row count (for /readyz)."""
        def _rows() -> int:
            with self._lock:
                if self._store is None:
                    # The vector size is learnt from the first search; counting does not need it.
                    self._store = ChunkStore(connect(self.cfg.milvus), self.cfg, dim=0)
                store = self._store
            try:
                return store.stored_rows()
            except DependencyUnavailableError:
                self._forget_store()
                raise

        return {"collection": self.cfg.milvus.collection, "rows": await asyncio.to_thread(_rows)}
