"""The Milvus collection behind ragserve: schema, writes and hybrid search.

One collection holds chunks with a dense vector (the encoder's) and a BM25 sparse vector that
Milvus computes itself from the ``lexical`` field. ``lexical`` holds the *preprocess stage's*
tokens joined by spaces (jieba-segmented Chinese, stemmed English, stopwords removed), so
queries and documents go through exactly the same tokenisation, for both languages, and Milvus's
``standard`` analyzer (``\\w+``) only has to split on the spaces.

Every call carries ``timeout``: pymilvus otherwise retries for a long time. Failures become
typed errors (503 unreachable, 504 timed out) for the ingress to map.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from deployments.config import MilvusConfig, SearchConfig
from deployments.envs import env
from deployments.errors import (
    ConflictError, DependencyTimeoutError, DependencyUnavailableError, NotFoundError, RagServeError,
)
from deployments.protocol.stages import Hit
from deployments.protocol.types import Filter, split_encoded
from deployments.search.filters import LIVE, compile_filter, quote
from deployments.search.versions import CorpusVersions

log = logging.getLogger(__name__)

OUTPUT_FIELDS = ["id", "doc_id", "source", "title", "chunk_index", "text", "tags", "created_at", "updated_at",
                 "doc_hash"]
_VARCHAR_MAX = 65535
#: A copy's property naming the encoder that embedded it: its tag, or UNTUNED.
ENCODER_PROPERTY = "ragserve.encoder"
UNTUNED = "-"
#: Fields a collection must have to be a ragserve chunk collection of this version (checked
#: by name: milvus-lite does not keep a collection's description).
REQUIRED_FIELDS = frozenset({"id", "doc_id", "doc_hash", "live", "tags", "created_at", "updated_at", "text",
                             "lexical", "sparse", "dense", "acl"})


@contextmanager
def milvus_errors(what: str, timeout_s: float) -> Iterator[None]:
    """Map pymilvus failures to typed errors: 503/504 for Milvus, 500 for data ragserve built wrong."""
    import grpc
    from pymilvus.exceptions import DataNotMatchException, DataTypeNotMatchException, MilvusException

    start = time.monotonic()
    try:
        yield
    except (DataNotMatchException, DataTypeNotMatchException) as e:
        # Rows are built here from validated input: a mismatch is this server's bug, not an
        # unavailable Milvus (a 503 would invite retries that fail the same way).
        raise RagServeError(f"Milvus refused the rows built for {what}: {getattr(e, 'message', e)}") from None
    except MilvusException as e:
        elapsed = time.monotonic() - start
        msg = f"Milvus {what} failed: {e.message if hasattr(e, 'message') else e}"
        if "collection not found" in str(e).lower():  # dropped meanwhile (e.g. by another replica)
            raise NotFoundError(f"collection not found ({what})", param="collection") from None
        if "deadline" in str(e).lower() or elapsed >= timeout_s * 0.95:
            raise DependencyTimeoutError(f"Milvus {what} timed out after {elapsed:.1f}s") from None
        raise DependencyUnavailableError(msg) from None
    except grpc.RpcError as e:
        # pymilvus re-raises some gRPC failures as they are (a search past its deadline does);
        # they cannot cross a Serve hop (not picklable), so they are typed here like the rest.
        code = e.code() if callable(getattr(e, "code", None)) else None
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise DependencyTimeoutError(f"Milvus {what} timed out after {time.monotonic() - start:.1f}s") from None
        raise DependencyUnavailableError(f"Milvus {what} failed: gRPC {getattr(code, 'name', code)}") from None
    except (ConnectionError, OSError) as e:
        raise DependencyUnavailableError(f"Milvus {what} failed: {e}") from None


def not_loaded(err: Exception) -> bool:
    """Whether a Milvus failure says the collection is not loaded (a restarted Milvus server
    brings its collections back released; loading them again is the cure, not a 503)."""
    text = str(getattr(err, "message", err)).lower()
    return "released" in text or "not loaded" in text


def connect(cfg: MilvusConfig) -> Any:
    """Open a ``MilvusClient`` (embedded Lite for a .db path, else a server URI)."""
    from pymilvus import MilvusClient

    from pymilvus.exceptions import MilvusException

    token = env("RAGSERVE_MILVUS_TOKEN") or ""
    deadline = time.monotonic() + cfg.timeout_s
    with milvus_errors("connect", cfg.timeout_s):
        while True:
            try:
                return MilvusClient(uri=cfg.uri, token=token, db_name=cfg.db_name, timeout=cfg.timeout_s)
            except MilvusException:
                # A server that just sent this process's shared channel a GOAWAY (milvus-lite does,
                # for pymilvus's keepalive pings) refuses the first attempt; the next one connects.
                if time.monotonic() + 0.5 > deadline:
                    raise
                time.sleep(0.5)


class ChunkStore:
    """Typed access to one chunk collection.

    Args:
        client: an open ``MilvusClient``.
        cfg: the search config (index type, fusion, timeouts).
        dim: the dense vector size (the encoder's).
        name: the collection (default ``cfg.milvus.collection``).
    """

    def __init__(self, client: Any, cfg: SearchConfig, dim: int, name: str | None = None) -> None:
        self.client = client
        self.cfg = cfg
        self.name = name or cfg.milvus.collection
        self.timeout = cfg.milvus.timeout_s
        self.dim = dim
        self.versions = CorpusVersions(client, self.timeout)
        #: The tag of the encoder that embedded this copy, as recorded on it (None: not recorded, a
        #: collection made before copies were tagged); read by ensure_collection.
        self.encoder_tag: str | None = None

    # ------------------------------------------------------------------ schema
    def exists(self) -> bool:
        with milvus_errors("has_collection", self.timeout):
            return bool(self.client.has_collection(self.name, timeout=self.timeout))

    def ensure_collection(self, create: bool = True) -> bool:
        """Load the collection, creating it (and its indexes) first if missing and ``create``.

        Returns whether it was created. Raises NotFoundError when it is missing and not
        ``create``, ConflictError when it exists with another schema (made by an older ragserve).
        """
        with milvus_errors("create collection", self.timeout):
            created = False
            if not self.client.has_collection(self.name, timeout=self.timeout):
                if not create:
                    raise NotFoundError(f"collection '{self.name}' does not exist", param="collection")
                self._create()
                created = True
            else:
                self._check_schema()
            self.client.load_collection(self.name, timeout=self.timeout)
            props = self.client.describe_collection(self.name, timeout=self.timeout).get("properties") or {}
        recorded = props.get(ENCODER_PROPERTY)
        self.encoder_tag = None if recorded is None else ("" if recorded == UNTUNED else recorded)
        return created

    def _check_schema(self) -> None:
        desc = self.client.describe_collection(self.name, timeout=self.timeout)
        missing = REQUIRED_FIELDS - {f.get("name") for f in desc.get("fields", [])}
        if missing:
            raise ConflictError(
                f"collection '{self.name}' was not made by this ragserve version (no field "
                f"{', '.join(sorted(missing))}); drop it and ingest again", param="collection",
            )
        dims = [f.get("params", {}).get("dim") for f in desc.get("fields", []) if f.get("name") == "dense"]
        if self.dim and dims and int(dims[0]) != self.dim:
            raise ConflictError(f"collection '{self.name}' holds {dims[0]}-d vectors; the encoder makes {self.dim}-d")

    def _create(self) -> None:
        from pymilvus import DataType, Function, FunctionType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("doc_id", DataType.VARCHAR, max_length=128)
        schema.add_field("source", DataType.VARCHAR, max_length=2048)
        schema.add_field("title", DataType.VARCHAR, max_length=1024)
        schema.add_field("chunk_index", DataType.INT64)
        schema.add_field("content_hash", DataType.VARCHAR, max_length=64)
        schema.add_field("doc_hash", DataType.VARCHAR, max_length=64)
        schema.add_field("tags", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=32, max_length=64)
        schema.add_field("created_at", DataType.INT64)
        schema.add_field("updated_at", DataType.INT64)
        schema.add_field("live", DataType.BOOL)
        # Groups that may read the chunk ("*": the whole tenant); every search of a keyed server filters on it.
        schema.add_field("acl", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=33, max_length=64)
        schema.add_field("text", DataType.VARCHAR, max_length=_VARCHAR_MAX)
        schema.add_field(
            "lexical",
            DataType.VARCHAR,
            max_length=_VARCHAR_MAX,
            enable_analyzer=True,
            analyzer_params={"tokenizer": "standard"},
        )
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_field("dense", DataType.FLOAT_VECTOR, dim=self.dim)
        schema.add_function(
            Function(
                name="bm25",
                function_type=FunctionType.BM25,
                input_field_names=["lexical"],
                output_field_names=["sparse"],
            )
        )
        index = MilvusClient.prepare_index_params()
        c = self.cfg
        dense_params = {"HNSW": {"M": c.hnsw_m, "efConstruction": c.hnsw_ef_construction},
                        "IVF_FLAT": {"nlist": c.ivf_nlist}}.get(c.index_type, {})
        index.add_index("dense", index_type=self.cfg.index_type, metric_type="IP", params=dense_params)
        index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        index.add_index("doc_id", index_type="INVERTED")
        # The copy records which encoder embeds it (its name says so too: protocol.types.encoded_collection).
        tag = split_encoded(self.name)[1] or UNTUNED
        self.client.create_collection(self.name, schema=schema, index_params=index, timeout=self.timeout,
                                      properties={ENCODER_PROPERTY: tag})
        log.info("created collection %s (dim=%d, %s)", self.name, self.dim, self.cfg.index_type)

    def drop(self) -> bool:
        """Drop the collection; returns whether it existed."""
        with milvus_errors("drop collection", self.timeout):
            if not self.client.has_collection(self.name, timeout=self.timeout):
                return False
            self.versions.invalidate(self.name)
            self.client.drop_collection(self.name, timeout=self.timeout)
        return True

    # ------------------------------------------------------------------ documents
    def document_state(self, doc_id: str) -> dict[str, str]:
        """``{chunk id: document version}`` of a document's live chunks (empty: not stored)."""
        return self.document_states([doc_id]).get(doc_id, {})

    def document_states(self, doc_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """:meth:`document_state` of several documents in one query."""
        if not doc_ids:
            return {}
        out: dict[str, dict[str, str]] = {}
        with milvus_errors("query", self.timeout):
            rows = self.client.query(
                self.name, filter=f"doc_id in [{', '.join(quote(d) for d in doc_ids)}] and {LIVE}",
                output_fields=["id", "doc_id", "doc_hash"], timeout=self.timeout,
            )
        for r in rows:
            out.setdefault(r["doc_id"], {})[r["id"]] = r["doc_hash"]
        return out

    def replace_document(self, doc_id: str, rows: Sequence[dict[str, Any]], old_ids: Iterable[str]) -> None:
        """Make ``rows`` the document's chunks, replacing ``old_ids``, in ONE upsert request.

        Chunk ids are positional (document id + chunk index), so the new version overwrites the
        old one id by id; chunks the new version no longer has are overwritten in the same request
        by *tombstones* (``live == false``, hidden by every search's filter). Milvus applies one
        request's rows at one timestamp, so a search sees the old version or the new one, never
        a mix and never neither (tested in tests/integration/test_documents.py). The tombstones
        are then deleted; if that is interrupted, they stay hidden and the next write of the
        document (or :meth:`purge_tombstones`) removes them. The collection's version token is
        forgotten before the write and replaced after it (``versions.py``: the retrieval cache).
        """
        self.replace_documents([(doc_id, rows, old_ids)])

    def replace_documents(self, docs: Sequence[tuple[str, Sequence[dict[str, Any]], Iterable[str]]]) -> None:
        """:meth:`replace_document` for several ``(doc_id, rows, old_ids)`` in one upsert request."""
        if not docs:
            return
        now = int(time.time())
        batch: list[dict[str, Any]] = []
        for doc_id, rows, old_ids in docs:
            new_ids = {r["id"] for r in rows}
            batch += [*rows, *(self._tombstone(i, doc_id, now) for i in sorted(set(old_ids) - new_ids))]
        ids = ", ".join(quote(d) for d, _, _ in docs)
        with milvus_errors("upsert", self.timeout):
            self.versions.invalidate(self.name)
            self.client.upsert(self.name, batch, timeout=self.timeout)
            self.client.delete(self.name, filter=f"doc_id in [{ids}] and live == false", timeout=self.timeout)
            self.client.flush(self.name, timeout=self.timeout)
            self.versions.bump(self.name)

    def _tombstone(self, chunk_id: str, doc_id: str, now: int) -> dict[str, Any]:
        return {"id": chunk_id, "doc_id": doc_id, "source": "", "title": "", "chunk_index": -1, "content_hash": "",
                "doc_hash": "", "tags": [], "created_at": 0, "updated_at": now, "live": False, "text": "",
                "lexical": "", "dense": [0.0] * self.dim, "acl": []}

    def delete_document(self, doc_id: str) -> int:
        """Delete every chunk of a document (one request); returns how many there were."""
        with milvus_errors("delete", self.timeout):
            n = len(self.client.query(self.name, filter=f"doc_id == {quote(doc_id)}", output_fields=["id"],
                                      timeout=self.timeout))
            if n:
                self.versions.invalidate(self.name)
                self.client.delete(self.name, filter=f"doc_id == {quote(doc_id)}", timeout=self.timeout)
                self.client.flush(self.name, timeout=self.timeout)
                self.versions.bump(self.name)
        return n

    def purge_tombstones(self) -> None:
        """Delete tombstones an interrupted write left behind (they are already invisible)."""
        with milvus_errors("delete", self.timeout):
            self.client.delete(self.name, filter="live == false", timeout=self.timeout)

    def stored_rows(self) -> int:
        """Rows Milvus reports for the collection (0 before it exists); no load needed."""
        with milvus_errors("stats", self.timeout):
            if not self.client.has_collection(self.name, timeout=self.timeout):
                return 0
            stats = self.client.get_collection_stats(self.name, timeout=self.timeout)
        return int(stats.get("row_count", 0))

    def count(self) -> int:
        """Live chunks in the collection."""
        with milvus_errors("count", self.timeout):
            res = self.client.query(self.name, filter=LIVE, output_fields=["count(*)"], timeout=self.timeout)
        return int(res[0]["count(*)"])

    # ------------------------------------------------------------------ search
    def search(self, vector: Sequence[float], lexical: str, top_k: int, mode: str,
               flt: Filter | None = None, acl: tuple[str, ...] | None = None) -> list[Hit]:
        """Dense, lexical (BM25) or hybrid (fused) search over live chunks matching ``flt`` and
        readable by the groups ``acl`` (None: no ACL filter); returns hits best first."""
        if mode == "lexical" and not lexical.strip():
            return []  # nothing left after stopwords: BM25 has nothing to match
        if mode == "hybrid" and not lexical.strip():
            mode = "dense"
        expr = compile_filter(flt, acl)
        common = {"output_fields": OUTPUT_FIELDS, "timeout": self.timeout, **self._consistency()}
        with milvus_errors("search", self.timeout):
            if mode == "dense":
                res = self.client.search(self.name, data=[list(vector)], anns_field="dense", limit=top_k, filter=expr,
                                         search_params=self._dense_params(top_k), **common)
            elif mode == "lexical":
                res = self.client.search(self.name, data=[lexical], anns_field="sparse", limit=top_k, filter=expr,
                                         search_params={"metric_type": "BM25"}, **common)
            else:
                res = self._hybrid(vector, lexical, top_k, expr, common)
        # BM25 scores are >= 0 and higher is better; milvus-lite reports them negated as distances
        # (best first, most negative), Milvus as they are: abs() gives the score either way.
        score = abs if mode == "lexical" else float
        return [_to_hit(h, score) for h in res[0]] if res else []

    def _dense_params(self, limit: int) -> dict[str, Any]:
        """Search parameters of the dense index (the recall/latency knobs of HNSW and IVF)."""
        params = {"HNSW": {"ef": max(self.cfg.hnsw_ef, limit)},  # Milvus requires ef >= limit
                  "IVF_FLAT": {"nprobe": self.cfg.ivf_nprobe}}.get(self.cfg.index_type, {})
        return {"metric_type": "IP", "params": params}

    def _consistency(self) -> dict[str, str]:
        """Strong reads while the retrieval cache is on: a result the ingress caches under a
        version token must include every write made before that token (a Milvus cluster's
        default, Bounded, may lag writes by seconds; milvus-lite has one node)."""
        return {"consistency_level": "Strong"} if self.cfg.cache.enabled else {}

    def _hybrid(self, vector: Sequence[float], lexical: str, top_k: int, expr: str, common: dict[str, Any]) -> Any:
        from pymilvus import AnnSearchRequest, RRFRanker, WeightedRanker

        n = max(self.cfg.candidates, top_k)
        reqs = [
            AnnSearchRequest([list(vector)], "dense", self._dense_params(n), limit=n, expr=expr),
            AnnSearchRequest([lexical], "sparse", {"metric_type": "BM25"}, limit=n, expr=expr),
        ]
        if self.cfg.ranker == "rrf":
            ranker = RRFRanker(self.cfg.rrf_k)
        else:
            ranker = WeightedRanker(self.cfg.dense_weight, 1 - self.cfg.dense_weight)
        return self.client.hybrid_search(self.name, reqs, ranker, limit=top_k, **common)


def list_collections(client: Any, timeout: float) -> list[dict[str, Any]]:
    """Every ragserve collection on the server with its live row count."""
    out = []
    with milvus_errors("list collections", timeout):
        for name in sorted(client.list_collections(timeout=timeout)):
            desc = client.describe_collection(name, timeout=timeout)
            if REQUIRED_FIELDS <= {f.get("name") for f in desc.get("fields", [])}:
                stats = client.get_collection_stats(name, timeout=timeout)
                out.append({"name": name, "rows": int(stats.get("row_count", 0))})
    return out


def _to_hit(h: Any, score: Callable[[float], float] = float) -> Hit:
    e = h["entity"] if "entity" in h else h
    return Hit(
        id=str(h.get("id", e.get("id"))),
        doc_id=e["doc_id"],
        source=e["source"],
        title=e.get("title", ""),
        chunk_index=int(e["chunk_index"]),
        text=e["text"],
        score=float(score(h["distance"])),
        tags=tuple(e.get("tags") or ()),
        created_at=int(e.get("created_at") or 0),
        updated_at=int(e.get("updated_at") or 0),
        version=e.get("doc_hash", ""),
    )
