"""``ragserve ingest`` through a running server: files parsed here, documents posted to its
``POST /v1/documents`` like any client's (the app's replicas chunk, embed and write them).

Nothing starts: no Ray, no model in this process. The server writes its encoder's copy of the
collection and, with API keys, the key's tenant's collection, as for any other write. A request
carries at most ``ingest.max_documents_per_request`` documents and stays within the server's
``ingress.max_body_bytes``; a document the API would refuse (an id, tag or field it does not
take) is reported skipped with the reason, as a bad file is.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from dataclasses import dataclass

import httpx
from pydantic import ValidationError

from deployments.client import ApiError, gather_bounded, post
from deployments.config import AppConfig
from deployments.ingest import sources
from deployments.ingest.parsers import Document
from deployments.ingest.pipeline import FileReport
from deployments.protocol.api import DocumentIn

#: Requests in flight at once. The server works on up to four documents of each request at a time
#: (``online.CONCURRENCY``); a second request keeps its stages busy while one's answer travels back.
REQUESTS_IN_FLIGHT = 2
#: Tries after a 503/504 (an overloaded or restarting stage), each after the server's Retry-After.
RETRIES = 3
#: Seconds one request may take: as long as embedding its documents does (the server bounds each
#: stage call with its own deadline, so a stuck stage still ends it sooner).
REQUEST_TIMEOUT_S = 600.0
#: Bytes of a request's envelope around its documents (``{"collection": ..., "documents": [...]}``).
ENVELOPE_BYTES = 512


@dataclass(frozen=True)
class Encoded:
    """A document as the API takes it, with its JSON and where it came from."""

    doc_id: str
    source: str
    body: bytes


def encode(doc: Document) -> Encoded | FileReport:
    """The document as one entry of a ``POST /v1/documents`` body, or a ``skipped`` report naming
    what the API would refuse."""
    try:
        d = DocumentIn(id=doc.doc_id, text=doc.text, title=doc.title, source=doc.source, tags=list(doc.tags),
                       created_at=doc.created_at, acl=list(doc.acl))
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        return FileReport(doc.source, "skipped", reason=f"not accepted by POST /v1/documents ({problems})",
                          doc_id=doc.doc_id)
    body = json.dumps(d.model_dump(mode="json"), ensure_ascii=False, separators=(",", ":")).encode()
    return Encoded(doc.doc_id, doc.source, body)


def batches(docs: Iterable[Encoded], max_documents: int, max_bytes: int) -> list[list[Encoded]]:
    """Consecutive runs of ``docs``, each of at most ``max_documents`` documents and a body of at
    most ``max_bytes`` (a document too large for any body is a batch of its own, refused by the
    server and reported)."""
    out: list[list[Encoded]] = []
    size = 0
    for d in docs:
        if not out or len(out[-1]) >= max_documents or size + len(d.body) + 1 > max_bytes - ENVELOPE_BYTES:
            out.append([])
            size = 0
        out[-1].append(d)
        size += len(d.body) + 1
    return out


def body(collection: str | None, batch: list[Encoded]) -> bytes:
    """The request body of one batch (the documents' JSON as encoded, unchanged)."""
    head = b'{"collection":' + json.dumps(collection).encode() if collection else b"{"
    return head + (b"," if collection else b"") + b'"documents":[' + b",".join(d.body for d in batch) + b"]}"


async def _send(client: httpx.AsyncClient, collection: str | None, batch: list[Encoded]) -> list[FileReport]:
    sources_by_id = {d.doc_id: d.source for d in batch}
    try:
        res = await post(client, "/v1/documents", body(collection, batch), RETRIES)
    except (ApiError, httpx.HTTPError) as e:
        return [FileReport(d.source, "skipped", reason=str(e), doc_id=d.doc_id) for d in batch]
    return [FileReport(sources_by_id.get(r["id"], r["id"]), r["status"], r["chunks"], doc_id=r["id"])
            for r in res["results"]]


async def _upload(url: str, key: str | None, collection: str | None, docs: list[Encoded], cfg: AppConfig,
                  progress: bool) -> tuple[list[FileReport], int | None]:
    from tqdm import tqdm

    headers = {"authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=REQUEST_TIMEOUT_S) as client:
        if collection:
            # Created when missing (the admin scope); a key without it may still write one that exists.
            r = await client.post("/v1/collections", json={"name": collection})
            if r.status_code not in (200, 201, 403):
                raise ApiError(f"POST /v1/collections failed with {r.status_code}: {r.text[:300]}")
        todo = batches(docs, cfg.ingest.max_documents_per_request, cfg.ingress.max_body_bytes)
        with tqdm(total=len(docs), desc="ingest", unit="doc", disable=not progress) as bar:
            async def one(batch: list[Encoded]) -> list[FileReport]:
                out = await _send(client, collection, batch)
                bar.update(len(batch))
                return out

            reports = [r for rs in await gather_bounded(todo, one, REQUESTS_IN_FLIGHT) for r in rs]
        listed = (await client.get("/v1/collections")).json()
    name = collection or listed.get("default")
    rows = next((c["rows"] for c in listed.get("collections", []) if c["name"] == name), None)
    return reports, rows


def run(refs: list[sources.FileRef], cfg: AppConfig, url: str, key: str | None, collection: str | None,
        progress: bool = True) -> tuple[list[FileReport], int | None]:
    """Parse the listed files here and post their documents to the server at ``url``.

    Args:
        refs: the files (:func:`sources.list_files`).
        key: the API key sent as a bearer token (None: an open server).
        collection: the collection named in the requests (None: the server's default).

    Returns:
        one report per document and per skipped file or line, and the collection's rows after.
    """
    from deployments.ingest.bulk import parse_ref

    reports: list[FileReport] = []
    docs: list[Encoded] = []
    for ref in refs:
        parsed, bad = parse_ref(ref, cfg)
        reports += bad
        for item in map(encode, parsed):
            (docs if isinstance(item, Encoded) else reports).append(item)  # type: ignore[arg-type]
    written, rows = asyncio.run(_upload(url, key, collection, docs, cfg, progress))
    return reports + written, rows
