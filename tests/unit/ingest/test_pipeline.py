"""Unit tests of ingestion without a store or a model: ``deployments.ingest.parsers`` and
``deployments.ingest.pipeline``.

Covers: ``parse_file`` for each format (.txt/.md heading titles, .html title/h1 and removed
script/style/nav, .pdf text layer and metadata title, .jsonl fields and per-line problems) and
every rejection (unsupported suffix, empty, NUL bytes, not UTF-8, over ``max_file_bytes``, no
text, not a PDF, corrupt, encrypted or text-less PDF, all-bad .jsonl); ``discover``'s source
names; ids (``source_doc_id``, positional ``chunk_id``) and the document version (changes
with text, title, tags and source, not with ``created_at``); ``is_unchanged``; ``rows``;
``ingest_document`` add → unchanged (nothing embedded or written) → updated (old chunk ids
handed over for tombstones); ``parse_reports`` and ``ingest_paths`` skipping bad files, and a
re-run finding everything unchanged. The store and embedder are small recording fakes: these
tests cover the id and replace logic only; the Milvus write itself is in integration tests.
"""

from __future__ import annotations

from dataclasses import replace

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from deployments.config import IngestConfig, PreprocessConfig
from deployments.ingest.parsers import BadFile, Document, Parsed, parse_file, source_doc_id
from deployments.ingest.pipeline import (
    FileReport,
    chunk_id,
    discover,
    ingest_document,
    ingest_paths,
    is_unchanged,
    parse_reports,
    plan,
    plan_chunks,
    rows,
)

ICFG = IngestConfig(chunk_tokens=16, chunk_overlap_tokens=4)
PCFG = PreprocessConfig()
LONG = " ".join(f"Sentence {i} tells about pumps and valves." for i in range(12))


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def parse_one(path: Path, source: str | None = None, cfg: IngestConfig = ICFG) -> Document:
    parsed = parse_file(path, source or path.name, cfg)
    assert parsed.problems == [] and len(parsed.documents) == 1, parsed
    return parsed.documents[0]


# --------------------------------------------------------------------------- text and markdown
def test_markdown_heading_becomes_title(tmp_path: Path) -> None:
    p = write(
        tmp_path / "guide.md", "\ufeff# Pump Guide\r\n\r\nThe pump runs.\r\nIt is quiet.\n\n\n\nNext part.\n"
    )
    doc = parse_one(p, "docs/guide.md")
    assert doc == Document(
        source_doc_id("docs/guide.md"),
        "docs/guide.md",
        "Pump Guide",
        "The pump runs.\nIt is quiet.\n\nNext part.",
        (),
        int(p.stat().st_mtime),
    )


def test_text_without_heading_uses_stem(tmp_path: Path) -> None:
    doc = parse_one(write(tmp_path / "notes.TXT", "  Plain notes.\n#not a heading\n"))
    assert (doc.title, doc.text) == ("notes", "Plain notes.\n#not a heading")


def test_heading_alone_is_text_not_title(tmp_path: Path) -> None:
    doc = parse_one(write(tmp_path / "only.markdown", "# Just a heading\n"))
    assert (doc.title, doc.text) == ("only", "# Just a heading")


def test_invisible_only_text_is_no_text(tmp_path: Path) -> None:
    with pytest.raises(BadFile, match="no text"):
        parse_file(write(tmp_path / "zw.txt", "\u200b\u200c\n\u200d"), "zw.txt", ICFG)


def test_source_doc_id_is_a_hash_of_the_source() -> None:
    assert source_doc_id("corpus/a.md") == hashlib.sha256(b"corpus/a.md").hexdigest()[:32]
    assert source_doc_id("corpus/a.md") != source_doc_id("corpus/b.md")


# --------------------------------------------------------------------------- html
PAGE = """<!doctype html><html><head><title> Pump  Manual </title><style>.x { color: red }</style>
<script>var secret = "script text";</script></head>
<body><nav><a href="/">Home</a> <a href="/nav">Navigation link</a></nav>
<h1>Installing pumps</h1><p>Mount the pump&nbsp;level.</p>
<div>Block one</div><ul><li>Item one</li><li>Item two</li></ul><p>Line<br>broken</p>
<noscript>Enable JS</noscript><template>Hidden template</template><svg><title>svg title</title></svg>
<script>alert("body script")</script></body></html>"""


def test_html_title_and_visible_block_text(tmp_path: Path) -> None:
    doc = parse_one(write(tmp_path / "manual.html", PAGE))
    assert doc.title == "Pump  Manual"
    lines = doc.text.split("\n")
    for kept in [
        "Installing pumps",
        "Mount the pump level.",
        "Block one",
        "Item one",
        "Item two",
        "Line",
        "broken",
    ]:
        assert kept in lines, (kept, lines)
    for gone in [
        "script text",
        "body script",
        "color",
        "Home",
        "Navigation link",
        "Enable JS",
        "Hidden template",
        "svg title",
        "Pump  Manual",
    ]:
        assert gone not in doc.text


def test_html_title_falls_back_to_h1_then_stem(tmp_path: Path) -> None:
    assert (
        parse_one(write(tmp_path / "a.htm", "<body><h1>The <em>Head</em></h1><p>Body.</p></body>")).title
        == "The Head"
    )
    doc = parse_one(write(tmp_path / "plain.html", "<p>Only a paragraph.</p>"))
    assert (doc.title, doc.text) == ("plain", "Only a paragraph.")


def test_html_inline_markup_does_not_split_words(tmp_path: Path) -> None:
    doc = parse_one(write(tmp_path / "inline.html", "<p>The pump<b>s</b> run at 5 m<sup>3</sup>/h.</p>"))
    assert doc.text == "The pumps run at 5 m3/h."


def test_html_without_visible_text_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(BadFile, match="no text"):
        parse_file(
            write(tmp_path / "blank.html", "<html><head><script>x()</script></head><body> </body></html>"),
            "blank.html",
            ICFG,
        )


# --------------------------------------------------------------------------- pdf
def test_pdf_text_and_metadata_title(tmp_path: Path, make_pdf: Callable[..., bytes]) -> None:
    p = write(
        tmp_path / "report.pdf",
        make_pdf(["Pumps need (yearly) service.", "Valves too."], title="Annual Report"),
    )
    doc = parse_one(p, "docs/report.pdf")
    assert (doc.doc_id, doc.source, doc.title) == (
        source_doc_id("docs/report.pdf"),
        "docs/report.pdf",
        "Annual Report",
    )
    assert "Pumps need (yearly) service." in doc.text and "Valves too." in doc.text
    assert doc.created_at == int(p.stat().st_mtime)


def test_pdf_without_metadata_title_uses_stem(tmp_path: Path, make_pdf: Callable[..., bytes]) -> None:
    assert parse_one(write(tmp_path / "scan-01.pdf", make_pdf(["Some text."]))).title == "scan-01"


def test_pdf_with_non_string_title_is_parsed_or_rejected(
    tmp_path: Path, make_pdf: Callable[..., bytes]
) -> None:
    raw = make_pdf(["Body text."], title="My Title")
    broken = raw.replace(b"/Title (My Title)", b"/Title 8         ")  # same length: xref offsets stay valid
    assert broken != raw
    try:
        doc = parse_one(write(tmp_path / "odd.pdf", broken))
    except BadFile:
        return
    assert doc.text == "Body text."


def _encrypted(raw: bytes) -> bytes:
    import io

    from pypdf import PdfReader, PdfWriter

    w = PdfWriter(clone_from=PdfReader(io.BytesIO(raw)))
    w.encrypt("", "owner", algorithm="RC4-128")
    out = io.BytesIO()
    w.write(out)
    return out.getvalue()


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda pdf: pdf([]), "no text layer"),
        (lambda pdf: pdf(["   "]), "no text layer"),
        (lambda pdf: b"%PDF-1.4\n garbage", "corrupt PDF"),
        (lambda pdf: pdf(["Some text."])[:200], "corrupt PDF"),
        (lambda pdf: b"PK\x03\x04 a zip with a .pdf name", r"not a PDF \(no %PDF- header\)"),
        (lambda pdf: b"plain text named .pdf", "not a PDF"),
        (lambda pdf: _encrypted(pdf(["Secret text."])), "encrypted PDF"),
    ],
    ids=["no-text-layer", "blank-text", "garbage", "truncated", "zip", "text", "encrypted"],
)
def test_bad_pdfs_rejected(
    tmp_path: Path, make_pdf: Callable[..., bytes], make: Callable, reason: str
) -> None:
    with pytest.raises(BadFile, match=reason):
        parse_file(write(tmp_path / "bad.pdf", make(make_pdf)), "bad.pdf", ICFG)


# --------------------------------------------------------------------------- jsonl
def test_jsonl_fields(tmp_path: Path) -> None:
    lines = [
        (
            '{"id": "doc-1", "text": "First text.", "title": "First", "tags": ["hr", "policy"], '
            '"created_at": "2024-01-02", "source": "https://example.com/1", "label": "ignored"}'
        ),
        "",
        '{"text": "No id here.", "created_at": 1700000000}',
        '{"id": "doc-3", "text": "  Third.  "}',
    ]
    p = write(tmp_path / "batch.jsonl", "\n".join(lines) + "\n")
    parsed = parse_file(p, "data/batch.jsonl", ICFG)
    assert parsed.problems == []
    first, second, third = parsed.documents
    assert first == Document(
        "doc-1", "https://example.com/1", "First", "First text.", ("hr", "policy"), 1_704_153_600
    )
    # No id: derived from the file's source and the line number; no source: file source + "#" + id.
    sid = source_doc_id("data/batch.jsonl#3")
    assert second == Document(sid, f"data/batch.jsonl#{sid}", "", "No id here.", (), 1_700_000_000)
    assert (third.doc_id, third.source, third.text, third.created_at) == (
        "doc-3",
        "data/batch.jsonl#doc-3",
        "Third.",
        0,
    )


BAD_LINES = {
    "{not json": "line 1: ",
    '["a", "list"]': "line 1: not a JSON object",
    '{"title": "no text"}': "line 1: text: ",
    '{"text": 5}': "line 1: text: ",
    '{"text": "   "}': "line 1: no text",
    '{"text": "x", "id": "bad id"}': "line 1: id: ",
    '{"text": "x", "tags": "hr"}': "line 1: tags: ",
    '{"text": "x", "created_at": "yesterday"}': "line 1: created_at: ",
}


@pytest.mark.parametrize("bad", list(BAD_LINES))
def test_jsonl_bad_line_reported_good_lines_kept(tmp_path: Path, bad: str) -> None:
    p = write(tmp_path / "mixed.jsonl", f'{bad}\n{{"id": "good", "text": "Good line."}}\n{bad}')
    parsed = parse_file(p, "mixed.jsonl", ICFG)
    assert [d.doc_id for d in parsed.documents] == ["good"]
    assert len(parsed.problems) == 2
    assert parsed.problems[0].startswith(BAD_LINES[bad]) and parsed.problems[1].startswith("line 3: ")


def test_jsonl_all_bad_is_a_bad_file(tmp_path: Path) -> None:
    p = write(tmp_path / "bad.jsonl", '{"text": 5}\n{oops\n')
    with pytest.raises(BadFile, match=r"^no valid lines \(line 1: text: "):
        parse_file(p, "bad.jsonl", ICFG)
    with pytest.raises(BadFile, match=r"^no valid lines$"):
        parse_file(write(tmp_path / "blank.jsonl", "\n  \n"), "blank.jsonl", ICFG)


def test_jsonl_deeply_nested_line_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    p = write(tmp_path / "deep.jsonl", '{"id": "ok", "text": "Fine."}\n' + "[" * 100_000 + "\n")
    parsed = parse_file(p, "deep.jsonl", ICFG)
    assert [d.doc_id for d in parsed.documents] == ["ok"] and parsed.problems[0].startswith("line 2: ")


# --------------------------------------------------------------------------- rejections
@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("a.docx", b"text", r"^unsupported file type \.docx$"),
        ("README", b"text", r"^unsupported file type \(none\)$"),
        ("a.txt", b"", "^empty file$"),
        ("a.jsonl", b"", "^empty file$"),
        ("a.pdf", b"", "^empty file$"),
        ("a.md", b" \n\r\n\t ", "^no text$"),
        ("a.txt", b"abc\x00def", r"^binary content \(NUL bytes\)$"),
        ("a.html", b"<p>\x00</p>", "binary"),
        ("a.txt", b"ok \xff\xfe bytes", r"^not UTF-8 text \(.* at byte 3\)$"),
        ("a.jsonl", b'{"text": "caf\xe9"}', "not UTF-8"),
    ],
)
def test_rejected_files(tmp_path: Path, name: str, data: bytes, reason: str) -> None:
    with pytest.raises(BadFile, match=reason):
        parse_file(write(tmp_path / name, data), name, ICFG)


@pytest.mark.parametrize("name", ["f.txt", "f.html", "f.jsonl", "f.pdf"])
def test_file_over_limit(tmp_path: Path, name: str, make_pdf: Callable[..., bytes]) -> None:
    data = make_pdf(["Short."]) if name.endswith(".pdf") else b'{"text": "0123456789"}'
    cfg = IngestConfig(max_file_bytes=len(data))
    assert parse_file(write(tmp_path / name, data), name, cfg).documents  # exactly the limit is fine
    with pytest.raises(BadFile, match=rf"^file is {len(data) + 1} bytes; the limit is {len(data)}$"):
        parse_file(write(tmp_path / ("big" + name), data + b" "), name, cfg)


# --------------------------------------------------------------------------- discover
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
    monkeypatch.chdir(tmp_path)
    assert [s for _, s in discover(["corpus/sub"])] == ["sub/deep/c.md"]


# --------------------------------------------------------------------------- ids and versions
def doc(**kw: Any) -> Document:
    base: dict[str, Any] = {
        "doc_id": "d1",
        "source": "corpus/a.md",
        "title": "Pumps",
        "text": LONG,
        "tags": ("hr",),
        "created_at": 100,
    }
    return Document(**{**base, **kw})


def words(text: str) -> int:
    return len(text.split())


def test_chunk_ids_are_positional_and_stable() -> None:
    p = plan(doc(), words, ICFG, PCFG)
    assert len(p.chunk_ids) == len(p.texts) == len(p.hashes) > 2
    assert list(p.chunk_ids) == [chunk_id("d1", i) for i in range(len(p.texts))]
    assert len(set(p.chunk_ids)) == len(p.chunk_ids)
    assert chunk_id("d1", 0) == hashlib.sha256(b"d1:0").hexdigest()[:32]
    edited = plan(doc(text=LONG.replace("Sentence 0", "Sentence zero")), words, ICFG, PCFG)
    assert edited.chunk_ids[0] == p.chunk_ids[0] and edited.hashes[0] != p.hashes[0]  # same slot, same id
    assert edited.hashes[1:] == p.hashes[1:]
    assert plan(doc(doc_id="d2"), words, ICFG, PCFG).chunk_ids[0] != p.chunk_ids[0]


def test_plan_normalizes_chunk_text() -> None:
    p = plan_chunks(doc(), ["Ｆｕｌｌ\u3000width  and\tthe ﬁle\u200b."], PCFG)
    assert p.texts == ("Full width and the file.",)
    assert p.hashes == (hashlib.sha256(b"Full width and the file.").hexdigest()[:32],)


@pytest.mark.parametrize(
    "change",
    [
        {"text": LONG + " One more."},
        {"title": "Valves"},
        {"tags": ("hr", "x")},
        {"tags": ()},
        {"tags": ("x", "hr")},
        {"source": "corpus/b.md"},
    ],
    ids=["text", "title", "tag-added", "tags-removed", "tag-order", "source"],
)
def test_version_changes_with_content_and_metadata(change: dict[str, Any]) -> None:
    assert plan(doc(**change), words, ICFG, PCFG).version != plan(doc(), words, ICFG, PCFG).version


def test_version_ignores_created_at() -> None:
    assert plan(doc(created_at=999), words, ICFG, PCFG).version == plan(doc(), words, ICFG, PCFG).version


def test_version_tells_tags_with_commas_apart() -> None:
    assert (
        plan(doc(tags=("a", "b")), words, ICFG, PCFG).version
        != plan(doc(tags=("a,b",)), words, ICFG, PCFG).version
    )


def test_is_unchanged() -> None:
    p = plan(doc(), words, ICFG, PCFG)
    stored = {cid: p.version for cid in p.chunk_ids}
    assert is_unchanged(p, stored)
    assert not is_unchanged(p, {})
    assert not is_unchanged(p, {**stored, chunk_id("d1", 99): p.version})  # an extra stored chunk
    assert not is_unchanged(p, dict(list(stored.items())[:-1]))  # a missing chunk
    assert not is_unchanged(p, {**stored, p.chunk_ids[0]: "old-version"})


def test_rows_fields() -> None:
    p = plan_chunks(doc(), ["One chunk.", "Two chunk."], PCFG)
    out = rows(p, [[1.0, 0.0], [0.0, 1.0]], ["one chunk", "two chunk"], now=1234)
    assert out[1] == {
        "id": chunk_id("d1", 1),
        "doc_id": "d1",
        "source": "corpus/a.md",
        "title": "Pumps",
        "chunk_index": 1,
        "content_hash": p.hashes[1],
        "doc_hash": p.version,
        "tags": ["hr"],
        "created_at": 100,
        "updated_at": 1234,
        "live": True,
        "text": "Two chunk.",
        "lexical": "two chunk",
        "dense": [0.0, 1.0],
        "acl": ["*"],  # no acl: the whole tenant reads it
    }
    assert [r["chunk_index"] for r in out] == [0, 1]
    restricted = rows(plan_chunks(replace(doc(), acl=("hr", "legal")), ["One."], PCFG), [[1.0, 0.0]], ["one"])
    assert restricted[0]["acl"] == ["hr", "legal"]
    # The ACL is part of the version: re-sending a document with other groups rewrites it.
    assert plan_chunks(replace(doc(), acl=("hr",)), ["One."], PCFG).version != plan_chunks(doc(), ["One."], PCFG).version
    assert rows(p, [[1.0], [2.0]], ["a", "b"])[0]["updated_at"] > 1234  # default: now
    with pytest.raises(ValueError):  # a missing vector is an error, not a silently dropped chunk
        rows(p, [[1.0]], ["a", "b"])


# --------------------------------------------------------------------------- ingest logic
class FakeStore:
    """The store calls ingestion makes, over a dict of rows; ``calls`` records them in order."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, Any]] = []

    def document_state(self, doc_id: str) -> dict[str, str]:
        return {i: r["doc_hash"] for i, r in self.rows.items() if r["doc_id"] == doc_id}

    def replace_document(self, doc_id: str, new: list[dict[str, Any]], old_ids: Any) -> None:
        old = set(old_ids)
        self.calls.append(("replace", (doc_id, [r["id"] for r in new], old)))
        self.rows.update({r["id"]: r for r in new})
        for i in old - {r["id"] for r in new}:  # what the tombstone + delete achieve in Milvus
            del self.rows[i]

    def purge_tombstones(self) -> None:
        self.calls.append(("purge", None))


class FakeEmbedder:
    dim = 4

    def __init__(self) -> None:
        self.embedded: list[str] = []

    def embed(self, texts: list[str], batch_size: int | None = None) -> list[list[float]]:
        assert batch_size == ICFG.embed_batch_size
        self.embedded += texts
        return [[float(len(t)), 0.0, 1.0, 0.0] for t in texts]

    def count_tokens(self, text: str) -> int:
        return words(text)


def test_add_then_unchanged_then_updated_with_fewer_chunks() -> None:
    store, emb = FakeStore(), FakeEmbedder()
    d = doc()
    first = ingest_document(d, store, emb, ICFG, PCFG)
    assert first == FileReport("corpus/a.md", "added", len(store.rows), doc_id="d1") and first.chunks > 3
    first_ids = set(store.rows)
    assert store.calls == [("replace", ("d1", [chunk_id("d1", i) for i in range(first.chunks)], set()))]
    assert all(
        len(r["dense"]) == emb.dim and r["doc_id"] == "d1" and r["lexical"] for r in store.rows.values()
    )
    assert emb.embedded == [r["text"] for r in sorted(store.rows.values(), key=lambda r: r["chunk_index"])]

    store.calls.clear()
    emb.embedded.clear()
    again = ingest_document(d, store, emb, ICFG, PCFG)
    assert again == FileReport("corpus/a.md", "unchanged", first.chunks, doc_id="d1")
    assert store.calls == [] and emb.embedded == []  # nothing embedded, nothing written
    touched = ingest_document(doc(created_at=555), store, emb, ICFG, PCFG)
    assert touched.status == "unchanged" and store.calls == []

    shorter = doc(text=" ".join(LONG.split(". ")[:4]) + ".")
    upd = ingest_document(shorter, store, emb, ICFG, PCFG)
    assert (upd.status, upd.doc_id) == ("updated", "d1") and 0 < upd.chunks < first.chunks
    [(op, (doc_id, new_ids, old_ids))] = store.calls
    assert (op, doc_id) == ("replace", "d1")
    assert old_ids == first_ids  # every stored chunk handed over: the store tombstones the ones not rewritten
    assert new_ids == [chunk_id("d1", i) for i in range(upd.chunks)]  # positional: a prefix of the old ids
    assert set(store.rows) == set(new_ids)
    assert ingest_document(shorter, store, emb, ICFG, PCFG).status == "unchanged"


def test_same_text_under_another_document_is_added() -> None:
    store, emb = FakeStore(), FakeEmbedder()
    ingest_document(doc(), store, emb, ICFG, PCFG)
    n = len(store.rows)
    assert ingest_document(doc(doc_id="d2", source="b.md"), store, emb, ICFG, PCFG).status == "added"
    assert len(store.rows) == 2 * n


def test_parse_reports(tmp_path: Path) -> None:
    docs, reports = parse_reports(write(tmp_path / "e.txt", ""), "c/e.txt", ICFG)
    assert (docs, reports) == ([], [FileReport("c/e.txt", "skipped", reason="empty file")])
    docs, reports = parse_reports(tmp_path / "missing.md", "c/missing.md", ICFG)  # OSError: reported too
    assert docs == [] and reports[0].status == "skipped" and "missing.md" in reports[0].reason
    p = write(tmp_path / "m.jsonl", '{"id": "a", "text": "A."}\n{oops\n')
    docs, reports = parse_reports(p, "c/m.jsonl", ICFG)
    assert [d.doc_id for d in docs] == ["a"]
    assert [(r.source, r.status, r.reason[:8]) for r in reports] == [("c/m.jsonl", "skipped", "line 2: ")]


def test_ingest_paths_skips_bad_files_and_rerun_is_unchanged(
    tmp_path: Path, make_pdf: Callable[..., bytes]
) -> None:
    corpus = tmp_path / "corpus"
    write(corpus / "good.md", "# Good\n\n" + LONG)
    write(corpus / "also.txt", "A short note about valves.")
    write(corpus / "manual.pdf", make_pdf(["The manual says: pumps need oil."], title="Manual"))
    write(corpus / "docs.jsonl", '{"id": "j1", "text": "From JSON."}\n{"text": 1}\n')
    write(corpus / "scan.pdf", make_pdf([]))
    write(corpus / "empty.txt", "")
    write(corpus / "blob.txt", b"\x00\x01")
    write(corpus / "slides.pptx", b"PK")
    store, emb = FakeStore(), FakeEmbedder()
    reports = ingest_paths([corpus], store, emb, ICFG, PCFG)
    assert store.calls[0] == ("purge", None)
    assert [(r.source, r.status, r.reason) for r in reports] == [
        ("corpus/also.txt", "added", ""),
        ("corpus/blob.txt", "skipped", "binary content (NUL bytes)"),
        ("corpus/docs.jsonl", "skipped", "line 2: text: Input should be a valid string"),
        ("corpus/docs.jsonl#j1", "added", ""),
        ("corpus/empty.txt", "skipped", "empty file"),
        ("corpus/good.md", "added", ""),
        ("corpus/manual.pdf", "added", ""),
        ("corpus/scan.pdf", "skipped", "PDF has no text layer (scanned?)"),
        ("corpus/slides.pptx", "skipped", "unsupported file type .pptx"),
    ]
    assert {r["title"] for r in store.rows.values()} == {"Good", "also", "Manual", ""}
    assert {r["doc_id"] for r in store.rows.values()} == {
        source_doc_id("corpus/also.txt"),
        source_doc_id("corpus/good.md"),
        source_doc_id("corpus/manual.pdf"),
        "j1",
    }
    rows_before = dict(store.rows)

    store.calls.clear()
    emb.embedded.clear()
    os.utime(corpus / "good.md", (1, 1))  # touched, not changed: still the same version
    again = ingest_paths([corpus], store, emb, ICFG, PCFG)
    assert [(r.source, r.status) for r in again] == [
        (r.source, "unchanged" if r.status == "added" else r.status) for r in reports
    ]
    assert [r.chunks for r in again] == [r.chunks for r in reports]
    assert store.calls == [("purge", None)] and emb.embedded == [] and store.rows == rows_before


def test_parsed_defaults_are_independent() -> None:
    a, b = Parsed(), Parsed()
    a.problems.append("x")
    assert b.problems == [] and b.documents == []
