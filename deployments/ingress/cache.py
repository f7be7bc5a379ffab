"""The retrieval cache: a question asked again of an unchanged collection costs one Milvus read.

It sits in the ingress, in front of every stage of retrieval, because that is where a hit saves
the most: preprocess, the encoder (the largest stage cost of a retrieval, docs/benchmarks.md)
and search, and the three stage hops. A cache in the search stage would still pay the encoder
and two hops on every hit.

**Correctness.** An entry is served only under the collection's current version token
(``deployments/search/versions.py``), read from Milvus before every lookup; every write (through
any search replica, bulk ingestion, ``ragserve ingest --local``) replaces the token, so nothing
cached before a write is served after it, by any ingress replica. No token (a write in flight,
a collection never written since this cache existed, Milvus unreachable): no cache. The token is
read before the retrieval runs, so what is stored under it was retrieved after that token's write.

**The key** is everything that changes the answer: the normalised question (what preprocess
analyses: NFKC, whitespace collapsed), the tenant-qualified collection, the caller's ACL groups,
the filter, the mode and top_k, and a fingerprint of the config that shapes retrieval (search,
precision, rerank, preprocess, encoder model). So a passage reaches only callers of the same
tenant and groups asking the same thing. The collection is the ingress's encoder's copy of it
(``protocol.types.encoded_collection``), keys and tokens alike, and the pipeline keeps only what
that copy answered: after a rollout of another encoder no hit pairs one encoder's passages with
another's questions.

**Bounds**: ``search.cache.max_entries`` and ``max_bytes`` (an estimate of the passages' sizes),
least recently used first out. Per ingress replica, in its one event loop (no locking but the
Milvus client's creation, which runs in worker threads).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

from deployments import metrics
from deployments.config import AppConfig
from deployments.protocol.stages import PreparedQuery, SearchResult
from deployments.protocol.types import Filter

log = logging.getLogger("ray.serve")
Outcome = Literal["hit", "miss", "bypass"]
#: Estimated bytes of a hit besides its strings (the Python objects around them).
HIT_OVERHEAD_BYTES = 600


@dataclass(frozen=True)
class Entry:
    """One cached retrieval, valid under ``token`` only."""

    token: str
    prepared: PreparedQuery
    result: SearchResult
    size: int


def entry_size(prepared: PreparedQuery, result: SearchResult) -> int:
    """Estimated bytes of a retrieval: its strings, and a fixed overhead per hit."""
    strings = sum(len(h.text) + len(h.title) + len(h.source) + len(h.id) + len(h.doc_id) + len(h.version)
                  + sum(map(len, h.tags)) for h in result.hits)
    return strings + len(result.hits) * HIT_OVERHEAD_BYTES + 2 * len(prepared.text) + sum(map(len, prepared.tokens))


def config_fingerprint(cfg: AppConfig) -> str:
    """A digest of the config that shapes a retrieval's result (not its connection or scaling)."""
    parts = [cfg.search.model_dump_json(exclude={"milvus", "deployment", "cache"}),
             cfg.reranker.model_dump_json(exclude={"deployment"}) if cfg.reranker.enabled else "no rerank",
             cfg.preprocess.model_dump_json(exclude={"deployment"}), cfg.encoder.model]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


class RetrievalCache:
    """Retrievals by key, valid under their collection's version token.

    Args:
        cfg: the application config (``search.cache`` bounds it; ``search.milvus`` is where the
            tokens are read).
        versions: the token reader, ``collection -> token or None`` (blocking; run in a worker
            thread); default: :class:`MilvusVersions` over ``search.milvus``.
    """

    def __init__(self, cfg: AppConfig, versions: Any = None) -> None:
        self.max_entries = cfg.search.cache.max_entries
        self.max_bytes = cfg.search.cache.max_bytes
        self.fingerprint = config_fingerprint(cfg)
        self.versions = versions or MilvusVersions(cfg)
        self.entries: OrderedDict[tuple, Entry] = OrderedDict()
        self.bytes = 0
        self.counts: dict[Outcome, int] = {"hit": 0, "miss": 0, "bypass": 0}

    def key(self, text: str, collection: str, acl: tuple[str, ...] | None, flt: Filter | None, mode: str,
            top_k: int) -> tuple:
        """The key of a retrieval (``text`` already normalised as preprocess does)."""
        return (text, collection, acl, flt.model_dump_json() if flt is not None else None, mode, top_k,
                self.fingerprint)

    async def token(self, collection: str) -> str | None:
        """The collection's version token now; None (no cache) when it has none or Milvus failed."""
        try:
            return await asyncio.to_thread(self.versions.read, collection)
        except Exception as e:  # noqa: BLE001 - any failure means: do not trust the cache
            log.warning("retrieval cache: no version token for %s (%s: %s)", collection, type(e).__name__, e)
            return None

    def get(self, key: tuple, token: str | None) -> Entry | None:
        """The entry of ``key`` if it was stored under ``token``; counts the lookup."""
        entry = self.entries.get(key) if token is not None else None
        if entry is not None and entry.token == token:
            self.entries.move_to_end(key)
            self._count("hit")
            return entry
        self._count("miss" if token is not None else "bypass")
        return None

    def put(self, key: tuple, token: str, prepared: PreparedQuery, result: SearchResult) -> None:
        """Keep a retrieval made after ``token`` was read; evicts the least recently used."""
        entry = Entry(token, prepared, result, entry_size(prepared, result))
        if entry.size > self.max_bytes:
            return
        self._drop(key)
        self.entries[key] = entry
        self.bytes += entry.size
        while len(self.entries) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self.entries)))
        metrics.set_gauge("rag_retrieval_cache_entries", len(self.entries))
        metrics.set_gauge("rag_retrieval_cache_bytes", self.bytes)

    def skipped(self) -> None:
        """A lookup the caller did not want (``Cache-Control: no-cache``)."""
        self._count("bypass")

    def _drop(self, key: tuple) -> None:
        old = self.entries.pop(key, None)
        if old is not None:
            self.bytes -= old.size

    def _count(self, outcome: Outcome) -> None:
        self.counts[outcome] += 1
        metrics.inc("rag_retrieval_cache_lookups_total", result=outcome)

    def stats(self) -> dict[str, int]:
        """Lookups by outcome, entries and bytes held (this replica's)."""
        return {**self.counts, "entries": len(self.entries), "bytes": self.bytes}


class MilvusVersions:
    """Reads version tokens from the Milvus of ``search.milvus`` with a client of its own, opened
    on first use and again after a failure (Milvus restarted or replaced)."""

    def __init__(self, cfg: AppConfig) -> None:
        self.cfg = cfg.search.milvus
        self._versions: Any = None
        self._lock = threading.Lock()

    def read(self, collection: str) -> str | None:
        from deployments.search.store import connect, milvus_errors
        from deployments.search.versions import CorpusVersions

        with self._lock:
            if self._versions is None:
                versions = CorpusVersions(connect(self.cfg), self.cfg.timeout_s)
                with milvus_errors("version collection", self.cfg.timeout_s):
                    versions.ensure()
                self._versions = versions
            versions = self._versions
        try:
            with milvus_errors("version read", self.cfg.timeout_s):
                return versions.read(collection)
        except Exception:
            with self._lock:
                self._versions = None  # open a new client (and load the collection) next time
            raise
