"""Ingest files into the chunk collection, idempotently.

Ids are stable: a document's id is a hash of its source name, a chunk's id a hash of
(document id, position, content). Re-ingesting an unchanged file therefore finds exactly its
stored ids and writes nothing; a changed file has its new chunks upserted first and its stale
chunks deleted after, so a reader never finds the document missing.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from deployments.config import IngestConfig, PreprocessConfig
from deployments.ingest.chunking import chunk_text
from deployments.preprocess.text import document_lexical, normalize

log = logging.getLogger(__name__)
TEXT_SUFFIXES = {".txt", ".md", ".markdown"}


class Embeds(Protocol):
    dim: int

    def embed(self, texts: list[str], batch_size: int | None = None) -> list[list[float]]: ...
    def count_tokens(self, text: str) -> int: ...


@dataclass(frozen=True)
class Document:
    """A parsed document: ``source`` names it stably (its id derives from it)."""

    source: str
    title: str
    text: str

    @property
    def doc_id(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class FileReport:
    """What happened to one file."""

    source: str
    status: Literal["added", "updated", "unchanged", "skipped"]
    chunks: int = 0
    reason: str = ""


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


def read_document(path: Path, source: str, cfg: IngestConfig) -> Document:
    """Read a text/markdown file; the title is its first ``# `` heading or its file name.

    Raises:
        ValueError: unsupported type, too large, empty, or not UTF-8 (the reason is reported).
    """
    if path.suffix.lower() not in TEXT_SUFFIXES:
        raise ValueError(f"unsupported file type {path.suffix or '(none)'}")
    size = path.stat().st_size
    if size > cfg.max_file_bytes:
        raise ValueError(f"file is {size} bytes; the limit is {cfg.max_file_bytes}")
    try:
        raw = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    text = raw.replace("\r\n", "\n").strip()
    if not text or "\x00" in text:
        raise ValueError("empty file" if not text else "binary content")
    first, _, rest = text.partition("\n")
    if first.startswith("# ") and rest.strip():
        # The heading becomes the title (stored and shown with every chunk), not chunk text.
        return Document(source=source, title=first[2:].strip(), text=rest.strip())
    return Document(source=source, title=path.stem, text=text)


def chunk_rows(doc: Document, embedder: Embeds, icfg: IngestConfig, pcfg: PreprocessConfig) -> list[dict[str, Any]]:
    """Chunk, analyse and embed one document into Milvus rows."""
    chunks = chunk_text(doc.text, icfg.chunk_tokens, icfg.chunk_overlap_tokens, embedder.count_tokens)
    texts = [normalize(c.text, pcfg.unicode_form) for c in chunks]
    vectors = embedder.embed(texts, batch_size=icfg.embed_batch_size)
    rows = []
    for c, t, v in zip(chunks, texts, vectors, strict=True):
        content_hash = hashlib.sha256(t.encode()).hexdigest()[:32]
        rows.append({
            "id": hashlib.sha256(f"{doc.doc_id}:{c.index}:{content_hash}".encode()).hexdigest()[:32],
            "doc_id": doc.doc_id, "source": doc.source, "title": doc.title, "chunk_index": c.index,
            "content_hash": content_hash, "text": t, "lexical": document_lexical(t, pcfg), "dense": v,
        })
    return rows


def ingest_document(doc: Document, store: Any, embedder: Embeds, icfg: IngestConfig,
                    pcfg: PreprocessConfig) -> FileReport:
    """Write one document's chunks, replacing any older version of it."""
    rows = chunk_rows(doc, embedder, icfg, pcfg)
    old = store.chunk_ids(doc.doc_id)
    new = {r["id"] for r in rows}
    if old == new:
        return FileReport(doc.source, "unchanged", len(rows))
    store.upsert([r for r in rows if r["id"] not in old])
    store.delete_ids(sorted(old - new))
    return FileReport(doc.source, "updated" if old else "added", len(rows))


def ingest_paths(paths: Iterable[str | Path], store: Any, embedder: Embeds, icfg: IngestConfig,
                 pcfg: PreprocessConfig) -> list[FileReport]:
    """Ingest every file under ``paths``; a bad file is reported and skipped, the rest go in."""
    reports = []
    for path, source in discover(paths):
        try:
            doc = read_document(path, source, icfg)
        except (ValueError, OSError) as e:
            reports.append(FileReport(source, "skipped", reason=str(e)))
            continue
        reports.append(ingest_document(doc, store, embedder, icfg, pcfg))
        log.info("%s: %s (%d chunks)", source, reports[-1].status, reports[-1].chunks)
    return reports
