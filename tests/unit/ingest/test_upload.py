"""Ingest through a running server's API (deployments/ingest/upload.py): documents encoded as the
API takes them (or reported skipped with the API's reason), and requests within its limits."""

from __future__ import annotations

import json

from deployments.ingest.parsers import Document
from deployments.ingest.pipeline import FileReport
from deployments.ingest.upload import ENVELOPE_BYTES, Encoded, batches, body, encode
from deployments.protocol.api import DocumentsRequest


def _doc(i: int, text: str = "Pumps run at 3 bar.", **kw) -> Document:
    return Document(doc_id=f"d{i}", source=f"docs/{i}.md", title=f"Doc {i}", text=text, **kw)


def test_a_document_is_encoded_as_the_api_takes_it() -> None:
    e = encode(_doc(1, "泵的压力是 3 bar。", tags=("ops",), created_at=1700000000, acl=("eng",)))
    assert isinstance(e, Encoded) and (e.doc_id, e.source) == ("d1", "docs/1.md")
    assert "泵".encode() in e.body  # UTF-8, not \\u escapes: what is counted is what is sent
    sent = json.loads(e.body)
    assert sent == {"id": "d1", "text": "泵的压力是 3 bar。", "title": "Doc 1", "source": "docs/1.md",
                    "tags": ["ops"], "created_at": 1700000000, "acl": ["eng"]}


def test_what_the_api_would_refuse_is_reported_skipped() -> None:
    bad = encode(Document(doc_id="bad id!", source="x.jsonl#1", title="", text="text"))
    assert isinstance(bad, FileReport) and bad.status == "skipped" and bad.source == "x.jsonl#1"
    assert "not accepted by POST /v1/documents (id:" in bad.reason


def test_batches_respect_the_document_count_and_body_size() -> None:
    docs = [encode(_doc(i)) for i in range(10)]
    assert [len(b) for b in batches(docs, 4, 1_000_000)] == [4, 4, 2]
    one = len(docs[0].body) + 1
    limit = ENVELOPE_BYTES + 3 * one  # room for three documents' JSON and the envelope
    runs = batches(docs, 64, limit)
    assert [len(b) for b in runs] == [3, 3, 3, 1]
    assert [d.doc_id for b in runs for d in b] == [f"d{i}" for i in range(10)]  # order kept, none lost
    assert all(len(body("kb", b)) <= limit for b in runs)


def test_a_document_larger_than_any_body_travels_alone() -> None:
    small, big = encode(_doc(1)), encode(_doc(2, "x" * 5000))
    assert [[d.doc_id for d in b] for b in batches([small, big, small], 64, 2000)] == [["d1"], ["d2"], ["d1"]]


def test_the_body_is_a_valid_documents_request() -> None:
    docs = [encode(_doc(i)) for i in range(3)]
    for collection in ("kb", None):
        req = DocumentsRequest.model_validate_json(body(collection, docs))
        assert req.collection == collection and [d.id for d in req.documents] == ["d0", "d1", "d2"]
