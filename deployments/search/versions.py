"""Corpus versions: a random token per collection, replaced by every write, kept in Milvus.

The retrieval cache (``deployments/ingress/cache.py``) keys what it keeps by this token, so a
cached retrieval is only ever served while the collection is exactly as it was when the
retrieval ran. The token lives in Milvus itself, in one small collection beside the chunk
collections, because every writer already reaches Milvus and nothing else: the search stage's
replicas (``/v1/documents``), bulk ingestion's write actors and ``ragserve ingest --local``
(which write to Milvus directly, possibly from another Ray cluster), and an operator's
re-ingest. They all write through :class:`~deployments.search.store.ChunkStore`, which calls
:meth:`CorpusVersions.invalidate` before a write and :meth:`CorpusVersions.bump` after it.

Why that order, and random tokens rather than a counter:

* before: the row is deleted, so while a write is in flight, and forever if its writer dies
  before the bump, readers find no token and do not use the cache (never a stale hit);
* after: a new random token; a reader reads the token *before* it searches, so whatever it
  caches under a token was searched after that token's write, and a write that completes later
  replaces the token;
* random: a Milvus that restarts with its data keeps the tokens (its cache entries stay valid,
  as the data did); a Milvus replaced by an empty one, or a collection dropped and made again,
  can never bring back an old token (a counter restarting at 0 could).

Every call here is a raw pymilvus call: callers wrap them in ``store.milvus_errors``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

#: The collection holding the tokens; a ragserve chunk collection cannot have this name (its
#: schema lacks the chunk fields, so ``ensure_collection`` refuses it with 409).
VERSIONS_COLLECTION = "ragserve_corpus_versions"


class CorpusVersions:
    """The version tokens of one Milvus database's collections.

    Args:
        client: an open ``MilvusClient``.
        timeout_s: timeout of every call.
    """

    def __init__(self, client: Any, timeout_s: float) -> None:
        self.client = client
        self.timeout = timeout_s
        self._ensured = False

    def ensure(self) -> None:
        """Create the versions collection if it is missing, and load it (after a restart too)."""
        if not self.client.has_collection(VERSIONS_COLLECTION, timeout=self.timeout):
            self._create()
        self.client.load_collection(VERSIONS_COLLECTION, timeout=self.timeout)
        self._ensured = True

    def _create(self) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("name", DataType.VARCHAR, is_primary=True, max_length=512)
        schema.add_field("token", DataType.VARCHAR, max_length=64)
        schema.add_field("unused", DataType.FLOAT_VECTOR, dim=2)  # Milvus needs a vector field
        index = MilvusClient.prepare_index_params()
        index.add_index("unused", index_type="FLAT", metric_type="L2")
        self.client.create_collection(VERSIONS_COLLECTION, schema=schema, index_params=index, timeout=self.timeout)

    def read(self, collection: str) -> str | None:
        """The collection's token; None when it has none (a write in flight, or never written
        through this version of ragserve): then nothing cached for it may be used.

        Raises:
            pymilvus errors: Milvus is unreachable, or the versions collection is missing or not
                loaded (the caller opens a new client and :meth:`ensure` runs again).
        """
        # Strong: on a Milvus cluster a read must see every write acknowledged before it.
        rows = self.client.get(VERSIONS_COLLECTION, ids=[collection], output_fields=["token"],
                               timeout=self.timeout, consistency_level="Strong")
        return str(rows[0]["token"]) if rows else None

    def invalidate(self, collection: str) -> None:
        """Forget the token before a write: readers stop using the cache for ``collection``."""
        self._again_if_missing(lambda: self.client.delete(VERSIONS_COLLECTION, ids=[collection], timeout=self.timeout))

    def bump(self, collection: str) -> str:
        """A new token after a write; returns it."""
        row = {"name": collection, "token": uuid.uuid4().hex, "unused": [0.0, 0.0]}
        self._again_if_missing(lambda: self.client.upsert(VERSIONS_COLLECTION, [row], timeout=self.timeout))
        return row["token"]

    def _again_if_missing(self, call: Callable[[], object]) -> None:
        """``call``, and once more after :meth:`ensure` when the versions collection is missing or
        not loaded (the first write to a new Milvus, or the first after a restart).

        The first call of this object ensures the collection first: pymilvus logs every failed
        call at ERROR with a traceback, which on a fresh Milvus read like a failed ingest."""
        if not self._ensured:
            self.ensure()
        try:
            call()
        except Exception:  # noqa: BLE001 - pymilvus raises MilvusException subclasses; a real outage fails again
            self.ensure()
            call()
