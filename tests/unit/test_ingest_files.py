"""Unit tests of ``deployments.ingest.pipeline``: reading files, source names, idempotent ids.

Covers: ``read_document`` (markdown title heading, file-stem titles, and each rejection:
unsupported type, empty, binary, not UTF-8, over ``max_file_bytes``), ``discover``'s stable
source names, ``Document.doc_id``, and the add / unchanged / update / skip logic of
``ingest_document`` and ``ingest_paths``. The store and embedder are small in-memory fakes:
these tests cover the id and replace logic only; the real Milvus path is in integration tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from deployments.config import IngestConfig, PreprocessConfig
from deployments.ingest.pipeline import (
    Document,
    chunk_rows,
    discover,
    ingest_document,
    ingest_paths,
    read_document,
)

ICFG = IngestConfig(chunk_tokens=16, chunk_overlap_tokens=4)
PCFG = PreprocessConfig()


class FakeStore:
    """The three store calls ingest makes, over a dict; ``log`` records their order."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.log: list[tuple[str, list[str]]] = []

    def chunk_ids(self, doc_id: str) -> set[str]:
        return {i for i, r in self.rows.items() if r["doc_id"] == doc_id}

    def upsert(self, rows: list[dict[str, Any]]) -> None:
        self.log.append(("upsert", [r["id"] for r in rows]))
        self.rows.update({r["id"]: r for r in rows})

    def delete_ids(self, ids: list[str]) -> None:
        self.log.append(("delete", list(ids)))
        for i in ids:
            del self.rows[i]


class FakeEmbedder:
    dim = 4

    def embed(self, texts: list[str], batch_size: int | None = None) -> list[list[float]]:
        return [[float(len(t)), 0.0, 1.0, 0.0] for t in texts]

    def count_tokens(self, text: str) -> int:
        return len(text.split())


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


LONG = " ".join(f"Sentence {i} tells about pumps and valves." for i in range(12))


# --------------------------------------------------------------------------- read_document
def test_markdown_heading_becomes_title(tmp_path: Path) -> None:
    p = write(tmp_path / "guide.md", "# Pump Guide\n\nThe pump runs.\r\nIt is quiet.\n")
    doc = read_document(p, "docs/guide.md", ICFG)
    assert doc == Document(source="docs/guide.md", title="Pump Guide", text="The pump runs.\nIt is quiet.")


def test_text_without_heading_uses_stem(tmp_path: Path) -> None:
    p = write(tmp_path / "notes.txt", "  Plain notes.\n#not a heading\n")
    doc = read_document(p, "notes.txt", ICFG)
    assert (doc.title, doc.text) == ("notes", "Plain notes.\n#not a heading")


def test_heading_alone_is_text_not_title(tmp_path: Path) -> None:
    doc = read_document(write(tmp_path / "only.md", "# Just a heading\n"), "only.md", ICFG)
    assert (doc.title, doc.text) == ("only", "# Just a heading")


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("a.pdf", b"%PDF-1.4 ...", r"unsupported file type \.pdf"),
        ("a.bin", b"text", r"unsupported file type \.bin"),
        ("README", b"text", r"unsupported file type \(none\)"),
        ("a.txt", b"", "empty"),
        ("a.md", b" \n\r\n\t ", "empty"),
        ("a.txt", b"abc\x00def", "binary"),
        ("a.txt", b"ok \xff\xfe bytes", "not UTF-8"),
    ],
)
def test_rejected_files(tmp_path: Path, name: str, data: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        read_document(write(tmp_path / name, data), name, ICFG)


def test_file_over_limit(tmp_path: Path) -> None:
    cfg = IngestConfig(max_file_bytes=10)
    assert read_document(write(tmp_path / "small.txt", "0123456789"), "small.txt", cfg).text == "0123456789"
    with pytest.raises(ValueError, match="limit"):
        read_document(write(tmp_path / "big.txt", "0123456789A"), "big.txt", cfg)


# --------------------------------------------------------------------------- names and ids
def test_discover_source_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = tmp_path / "corpus"
    for rel in ["b.md", "a.txt", "sub/deep/c.md"]:
        write(corpus / rel, "x")
    single = write(tmp_path / "single.md", "x")
    found = list(discover([corpus, str(single)]))
    assert [s for _, s in found] == ["corpus/a.txt", "corpus/b.md", "corpus/sub/deep/c.md", "single.md"]
    assert found[2][0] == corpus / "sub" / "deep" / "c.md"
    monkeypatch.chdir(corpus)  # a relative "." names the same sources as the absolute path
    assert [s for _, s in discover(["."])] == ["corpus/a.txt", "corpus/b.md", "corpus/sub/deep/c.md"]


def test_doc_id_depends_on_source_only() -> None:
    a = Document("corpus/a.md", "A", "one")
    assert a.doc_id == Document("corpus/a.md", "other title", "other text").doc_id
    assert a.doc_id != Document("corpus/b.md", "A", "one").doc_id
    assert len(a.doc_id) == 32 and int(a.doc_id, 16) >= 0


# --------------------------------------------------------------------------- ingest logic
def test_add_then_unchanged_then_updated() -> None:
    store, emb = FakeStore(), FakeEmbedder()
    doc = Document("corpus/pumps.md", "Pumps", LONG)
    first = ingest_document(doc, store, emb, ICFG, PCFG)
    assert (first.status, first.source) == ("added", "corpus/pumps.md")
    assert first.chunks == len(store.rows) > 2
    assert all(len(r["dense"]) == emb.dim and r["doc_id"] == doc.doc_id for r in store.rows.values())
    first_ids = set(store.rows)

    store.log.clear()
    again = ingest_document(doc, store, emb, ICFG, PCFG)
    assert (again.status, again.chunks) == ("unchanged", first.chunks)
    assert store.log == [] and set(store.rows) == first_ids

    edited = Document(doc.source, doc.title, LONG.replace("Sentence 11 tells", "Sentence 11 now tells"))
    new_ids = {r["id"] for r in chunk_rows(edited, emb, ICFG, PCFG)}
    upd = ingest_document(edited, store, emb, ICFG, PCFG)
    assert upd.status == "updated"
    assert set(store.rows) == new_ids  # exactly the new chunks, stale ones gone
    (op1, upserted), (op2, deleted) = store.log
    assert (op1, op2) == ("upsert", "delete")  # new rows first, so the document never vanishes
    assert set(upserted) == new_ids - first_ids and set(deleted) == first_ids - new_ids
    assert 0 < len(upserted) < len(new_ids)  # unchanged leading chunks keep their ids


def test_same_text_under_another_source_is_another_document() -> None:
    store, emb = FakeStore(), FakeEmbedder()
    ingest_document(Document("a.md", "T", LONG), store, emb, ICFG, PCFG)
    n = len(store.rows)
    assert ingest_document(Document("b.md", "T", LONG), store, emb, ICFG, PCFG).status == "added"
    assert len(store.rows) == 2 * n


def test_ingest_paths_skips_bad_files(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    write(corpus / "good.md", "# Good\n\n" + LONG)
    write(corpus / "also.txt", "A short note about valves.")
    write(corpus / "scan.pdf", b"%PDF-1.4")
    write(corpus / "empty.txt", "")
    store = FakeStore()
    reports = {r.source: r for r in ingest_paths([corpus], store, FakeEmbedder(), ICFG, PCFG)}
    assert {s: r.status for s, r in reports.items()} == {
        "corpus/also.txt": "added", "corpus/empty.txt": "skipped",
        "corpus/good.md": "added", "corpus/scan.pdf": "skipped",
    }
    assert "unsupported file type .pdf" in reports["corpus/scan.pdf"].reason
    assert reports["corpus/empty.txt"].reason == "empty file"
    assert {r["source"] for r in store.rows.values()} == {"corpus/good.md", "corpus/also.txt"}
    assert {r["title"] for r in store.rows.values()} == {"Good", "also"}
    again = ingest_paths([corpus], store, FakeEmbedder(), ICFG, PCFG)
    assert [r.status for r in again] == ["unchanged", "skipped", "unchanged", "skipped"]
