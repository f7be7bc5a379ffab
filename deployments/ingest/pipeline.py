"""Documents → chunk rows → Milvus, idempotently; shared by every way documents get in.

The same functions serve ``ragserve ingest`` in one process, the Ray Data bulk pipeline
(:mod:`deployments.ingest.bulk`) and ``POST /v1/documents`` (through the stage deployments):

1. :func:`plan` chunks a document and derives its ids: chunk ids are positional (document id +
   chunk index), each chunk has a content hash, and the document *version* hashes its metadata
   and every chunk hash.
2. :func:`is_unchanged` compares the plan with what is stored: an unchanged document is skipped
   before any embedding is spent on it, and nothing is written.
3. :func:`rows` adds the lexical tokens and vectors; ``ChunkStore.replace_document`` writes the
   version in one request (see there for why a reader never sees two versions mixed).

A crashed run re-run converges: each document is written whole or not at all, written ones
are found unchanged, and tombstones of an interrupted replacement are purged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from deployments.config import IngestConfig, PreprocessConfig
from deployments.ingest.chunking import chunk_text
from deployments.protocol.types import PUBLIC_GROUP
from deployments.ingest.parsers import BadFile, Document, parse_file
from deployments.preprocess.text import document_lexical, normalize

log = logging.getLogger(__name__)


class Embeds(Protocol):
    dim: int

    def embed(self, texts: list[str], batch_size: int | None = None) -> list[list[float]]: ...
    def count_tokens(self, text: str) -> int: ...


@dataclass(frozen=True)
class FileReport:
    """What happened to one document (or to a file that gave none)."""

    source: str
    status: Literal["added", "updated", "unchanged", "skipped"]
    chunks: int = 0
    reason: str = ""
    doc_id: str = ""


@dataclass(frozen=True)
class Plan:
    """A document cut into chunks, with its ids and version, before embedding."""

    doc: Document
    chunk_ids: tuple[str, ...]
    texts: tuple[str, ...]
    hashes: tuple[str, ...]
    version: str


def _h(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()[:32]


def chunk_id(doc_id: str, index: int) -> str:
    """Positional chunk id: the same slot of the same document always has the same id."""
    return _h(f"{doc_id}:{index}")


def plan(doc: Document, count_tokens: Callable[[str], int], icfg: IngestConfig, pcfg: PreprocessConfig) -> Plan:
    """Chunk ``doc`` (token-bounded, with overlap) and derive its chunk ids and version."""
    chunks = chunk_text(doc.text, icfg.chunk_tokens, icfg.chunk_overlap_tokens, count_tokens)
    return plan_chunks(doc, [c.text for c in chunks], pcfg)


def plan_chunks(doc: Document, chunks: list[str], pcfg: PreprocessConfig) -> Plan:
    """The :class:`Plan` of a document already cut into ``chunks``."""
    texts = tuple(normalize(c, pcfg.unicode_form) for c in chunks)
    hashes = tuple(_h(t) for t in texts)
    # created_at is left out on purpose: a file touched but not changed is not a new version.
    # The ACL is part of the version: re-sending a document with other groups rewrites its chunks.
    version = _h(json.dumps([doc.source, doc.title, list(doc.tags), hashes] + ([list(doc.acl)] if doc.acl else [])))
    return Plan(doc, tuple(chunk_id(doc.doc_id, i) for i in range(len(texts))), texts, hashes, version)


def is_unchanged(p: Plan, stored: dict[str, str]) -> bool:
    """Whether the stored ``{chunk id: version}`` is exactly this plan's version."""
    return set(stored) == set(p.chunk_ids) and all(v == p.version for v in stored.values())


def rows(p: Plan, vectors: list[list[float]], lexical: list[str], now: int | None = None) -> list[dict[str, Any]]:
    """Milvus rows of a planned document, given its chunks' vectors and lexical strings."""
    d, now = p.doc, now or int(time.time())
    return [
        {"id": cid, "doc_id": d.doc_id, "source": d.source, "title": d.title, "chunk_index": i,
         "content_hash": h, "doc_hash": p.version, "tags": list(d.tags), "created_at": d.created_at,
         "updated_at": now, "live": True, "text": t, "lexical": lex, "dense": v,
         "acl": list(d.acl) or [PUBLIC_GROUP]}
        for i, (cid, t, h, v, lex) in enumerate(zip(p.chunk_ids, p.texts, p.hashes, vectors, lexical, strict=True))
    ]


def ingest_document(doc: Document, store: Any, embedder: Embeds, icfg: IngestConfig,
                    pcfg: PreprocessConfig) -> FileReport:
    """Write one document's chunks, replacing any older version of it (in-process path)."""
    p = plan(doc, embedder.count_tokens, icfg, pcfg)
    stored = store.document_state(doc.doc_id)
    if is_unchanged(p, stored):
        return FileReport(doc.source, "unchanged", len(p.texts), doc_id=doc.doc_id)
    vectors = embedder.embed(list(p.texts), batch_size=icfg.embed_batch_size)
    store.replace_document(doc.doc_id, rows(p, vectors, [document_lexical(t, pcfg) for t in p.texts]), stored)
    return FileReport(doc.source, "updated" if stored else "added", len(p.texts), doc_id=doc.doc_id)


def discover(paths: Iterable[str | Path]) -> Iterator[tuple[Path, str]]:
    """Files under ``paths`` with their stable source names (``dir/sub/file.md`` relative to
    the given directory's parent, or the file name for a file given directly)."""
    for p in map(Path, paths):
        if p.is_dir():
            prefix = p.resolve().name
            for f in sorted(x for x in p.rglob("*") if x.is_file()):
                yield f, f"{prefix}/{f.relative_to(p).as_posix()}"
        else:
            yield p, p.name


def parse_reports(path: Path, source: str, icfg: IngestConfig) -> tuple[list[Document], list[FileReport]]:
    """Parse one file; a bad file (or .jsonl line) becomes a ``skipped`` report, never an exception."""
    try:
        parsed = parse_file(path, source, icfg)
    except (BadFile, OSError) as e:
        return [], [FileReport(source, "skipped", reason=str(e))]
    return parsed.documents, [FileReport(source, "skipped", reason=p) for p in parsed.problems]


def ingest_paths(paths: Iterable[str | Path], store: Any, embedder: Embeds, icfg: IngestConfig,
                 pcfg: PreprocessConfig) -> list[FileReport]:
    """Ingest every file under ``paths`` in this process; bad files are reported and skipped."""
    store.purge_tombstones()
    reports: list[FileReport] = []
    for path, source in discover(paths):
        docs, bad = parse_reports(path, source, icfg)
        reports.extend(bad)
        for doc in docs:
            reports.append(ingest_document(doc, store, embedder, icfg, pcfg))
            log.info("%s: %s (%d chunks)", doc.source, reports[-1].status, reports[-1].chunks)
    return reports
