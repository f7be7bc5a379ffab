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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from deployments.config import MilvusConfig, SearchConfig, env
from deployments.errors import DependencyTimeoutError, DependencyUnavailableError
from deployments.protocol import Hit

log = logging.getLogger(__name__)

OUTPUT_FIELDS = ["id", "doc_id", "source", "title", "chunk_index", "text"]
_VARCHAR_MAX = 65535


@contextmanager
def milvus_errors(what: str, timeout_s: float) -> Iterator[None]:
    """Map pymilvus failures to typed 503/504 errors."""
    from pymilvus.exceptions import MilvusException

    start = time.monotonic()
    try:
        yield
    except MilvusException as e:
        elapsed = time.monotonic() - start
        msg = f"Milvus {what} failed: {e.message if hasattr(e, 'message') else e}"
        if "deadline" in str(e).lower() or elapsed >= timeout_s * 0.95:
            raise DependencyTimeoutError(f"Milvus {what} timed out after {elapsed:.1f}s") from None
        raise DependencyUnavailableError(msg) from None
    except (ConnectionError, OSError) as e:
        raise DependencyUnavailableError(f"Milvus {what} failed: {e}") from None


def connect(cfg: MilvusConfig) -> Any:
    """Open a ``MilvusClient`` (embedded Lite for a .db path, else a server URI)."""
    from pymilvus import MilvusClient

    token = env("RAGSERVE_MILVUS_TOKEN") or ""
    with milvus_errors("connect", cfg.timeout_s):
        return MilvusClient(uri=cfg.uri, token=token, db_name=cfg.db_name, timeout=cfg.timeout_s)


class ChunkStore:
    """Typed access to one chunk collection."""

    def __init__(self, client: Any, cfg: SearchConfig, dim: int) -> None:
        self.client = client
        self.cfg = cfg
        self.name = cfg.milvus.collection
        self.timeout = cfg.milvus.timeout_s
        self.dim = dim

    # ------------------------------------------------------------------ schema
    def ensure_collection(self) -> None:
        """Create the collection and its indexes if missing, then load it."""
        with milvus_errors("create collection", self.timeout):
            if not self.client.has_collection(self.name, timeout=self.timeout):
                self._create()
            self.client.load_collection(self.name, timeout=self.timeout)

    def _create(self) -> None:
        from pymilvus import DataType, Function, FunctionType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=True)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("doc_id", DataType.VARCHAR, max_length=512)
        schema.add_field("source", DataType.VARCHAR, max_length=2048)
        schema.add_field("title", DataType.VARCHAR, max_length=1024)
        schema.add_field("chunk_index", DataType.INT64)
        schema.add_field("content_hash", DataType.VARCHAR, max_length=64)
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
        dense_params = {"M": 16, "efConstruction": 200} if self.cfg.index_type == "HNSW" else {}
        if self.cfg.index_type == "IVF_FLAT":
            dense_params = {"nlist": 128}
        index.add_index("dense", index_type=self.cfg.index_type, metric_type="IP", params=dense_params)
        index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        index.add_index("doc_id", index_type="INVERTED")
        self.client.create_collection(self.name, schema=schema, index_params=index, timeout=self.timeout)
        log.info("created collection %s (dim=%d, %s)", self.name, self.dim, self.cfg.index_type)

    # ------------------------------------------------------------------ writes
    def upsert(self, rows: Sequence[dict[str, Any]]) -> int:
        """Upsert chunk rows (``id, doc_id, source, title, chunk_index, content_hash, text,
        lexical, dense``) and flush so they are searchable at full speed."""
        if not rows:
            return 0
        with milvus_errors("upsert", self.timeout):
            self.client.upsert(self.name, list(rows), timeout=self.timeout)
            self.client.flush(self.name, timeout=self.timeout)
        return len(rows)

    def chunk_ids(self, doc_id: str) -> set[str]:
        """Ids of the chunks currently stored for a document."""
        with milvus_errors("query", self.timeout):
            rows = self.client.query(
                self.name, filter=f"doc_id == {quote(doc_id)}", output_fields=["id"], timeout=self.timeout
            )
        return {r["id"] for r in rows}

    def delete_ids(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        with milvus_errors("delete", self.timeout):
            self.client.delete(self.name, ids=list(ids), timeout=self.timeout)
            self.client.flush(self.name, timeout=self.timeout)

    def stored_rows(self) -> int:
        """Rows Milvus reports for the collection (0 before it exists); no load needed."""
        with milvus_errors("stats", self.timeout):
            if not self.client.has_collection(self.name, timeout=self.timeout):
                return 0
            stats = self.client.get_collection_stats(self.name, timeout=self.timeout)
        return int(stats.get("row_count", 0))

    def count(self) -> int:
        with milvus_errors("count", self.timeout):
            res = self.client.query(self.name, filter="", output_fields=["count(*)"], timeout=self.timeout)
        return int(res[0]["count(*)"])

    # ------------------------------------------------------------------ search
    def search(self, vector: Sequence[float], lexical: str, top_k: int, mode: str) -> list[Hit]:
        """Dense, lexical (BM25) or hybrid (fused) search; returns hits best first."""
        if mode == "lexical" and not lexical.strip():
            return []  # nothing left after stopwords: BM25 has nothing to match
        if mode == "hybrid" and not lexical.strip():
            mode = "dense"
        with milvus_errors("search", self.timeout):
            if mode == "dense":
                res = self.client.search(
                    self.name, data=[list(vector)], anns_field="dense", limit=top_k,
                    search_params={"metric_type": "IP"}, output_fields=OUTPUT_FIELDS, timeout=self.timeout,
                )
            elif mode == "lexical":
                res = self.client.search(
                    self.name, data=[lexical], anns_field="sparse", limit=top_k,
                    search_params={"metric_type": "BM25"}, output_fields=OUTPUT_FIELDS, timeout=self.timeout,
                )
            else:
                res = self._hybrid(vector, lexical, top_k)
        return [_to_hit(h) for h in res[0]] if res else []

    def _hybrid(self, vector: Sequence[float], lexical: str, top_k: int) -> Any:
        from pymilvus import AnnSearchRequest, RRFRanker, WeightedRanker

        n = max(self.cfg.candidates, top_k)
        reqs = [
            AnnSearchRequest([list(vector)], "dense", {"metric_type": "IP"}, limit=n),
            AnnSearchRequest([lexical], "sparse", {"metric_type": "BM25"}, limit=n),
        ]
        if self.cfg.ranker == "rrf":
            ranker = RRFRanker(self.cfg.rrf_k)
        else:
            ranker = WeightedRanker(self.cfg.dense_weight, 1 - self.cfg.dense_weight)
        return self.client.hybrid_search(
            self.name, reqs, ranker, limit=top_k, output_fields=OUTPUT_FIELDS, timeout=self.timeout
        )


def quote(value: str) -> str:
    """A Milvus string literal for ``value``: never splice raw text into a filter expression.

    (milvus-lite does not support ``filter_params`` templates, so escaping is done here.)
    """
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _to_hit(h: Any) -> Hit:
    e = h["entity"] if "entity" in h else h
    return Hit(
        id=str(h.get("id", e.get("id"))),
        doc_id=e["doc_id"],
        source=e["source"],
        title=e.get("title", ""),
        chunk_index=int(e["chunk_index"]),
        text=e["text"],
        score=float(h["distance"]),
    )
