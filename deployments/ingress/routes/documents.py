"""Writes: ``/v1/documents`` (upsert, delete) and ``/v1/collections`` (list, create, drop)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse

from deployments.errors import InvalidRequestError, NotFoundError, PayloadTooLargeError, RagServeError
from deployments.ingest import online
from deployments.ingress import http
from deployments.ingress.access import Access
from deployments.ingress.auth import Principal
from deployments.ingress.openapi import operation
from deployments.ingress.pipeline import Pipeline
from deployments.protocol.api import (
    CollectionCreated, CollectionDropped, CollectionInfo, CollectionRequest, CollectionsResponse, DocumentDeleted,
    DocumentsRequest, DocumentsResponse,
)
from deployments.protocol.types import COLLECTION_PATTERN, DOC_ID_PATTERN, split_encoded


def router(p: Pipeline) -> APIRouter:
    r = APIRouter(tags=["documents"])
    max_body = p.cfg.ingress.max_body_bytes
    default = p.cfg.search.milvus.collection
    search = p.handles["search"]

    @r.post("/v1/documents", **operation(
        body=DocumentsRequest, response=DocumentsResponse, errors=(400, 404, 409, 413),
        examples={"one document": {"documents": [{"id": "faq-1", "title": "Returns", "tags": ["faq"],
                                                  "text": "Items can be returned within 30 days."}]}}))
    async def upsert_documents(request: Request, who: Principal = p.access.requires("write")) -> DocumentsResponse:
        """Upsert documents: chunked by the encoder's tokenizer, analysed by preprocess, embedded
        by the encoder and written by search, each document replaced whole."""
        body = await http.read_json(request, DocumentsRequest, max_body)
        limit = p.cfg.ingest.max_documents_per_request
        if len(body.documents) > limit:
            raise PayloadTooLargeError(f"at most {limit} documents per request", param="documents")
        if len({d.id for d in body.documents}) != len(body.documents):
            raise InvalidRequestError("document ids must be unique within a request", param="documents")
        name = body.collection or default
        with audited(request, who, f"{name}: {len(body.documents)} documents"):
            results = await online.DocumentWriter(p).upsert(p.collection(who, name), body.documents)
        return DocumentsResponse(collection=name, results=results)

    @r.delete("/v1/documents/{doc_id}", **operation(response=DocumentDeleted, errors=(400, 404)))
    async def delete_document(request: Request, doc_id: Annotated[str, Path(pattern=DOC_ID_PATTERN)],
                              collection: Annotated[str | None, Query(pattern=COLLECTION_PATTERN)] = None,
                              who: Principal = p.access.requires("write")) -> DocumentDeleted:
        """Delete every chunk of a document (404 when it has none)."""
        name = collection or default
        with audited(request, who, f"{name}/{doc_id}"):
            n = await p.call(search.delete_document.remote(p.collection(who, name), doc_id, p.encoder_tag), "search")
            if not n:
                raise NotFoundError(f"document '{doc_id}' is not in collection '{name}'", param="doc_id")
        return DocumentDeleted(id=doc_id, collection=name, deleted_chunks=n)

    @r.get("/v1/collections", **operation(response=CollectionsResponse))
    async def list_collections(who: Principal = p.access.requires("query")) -> CollectionsResponse:
        """The caller's tenant's collections with their row counts (the configured encoder's copy)."""
        found = await p.call(search.collections.remote(), "search")
        rows: dict[str, int] = {}
        for c in found:  # one entry per collection, whichever encoders keep copies of it
            stored, tag = split_encoded(c["name"])
            if (n := who.visible(stored)) is not None and (n not in rows or tag == p.encoder_tag):
                rows[n] = c["rows"]
        return CollectionsResponse(collections=[CollectionInfo(name=n, rows=r) for n, r in sorted(rows.items())],
                                   default=default)

    created = operation(body=CollectionRequest, response=CollectionCreated, status=201, errors=(400, 409, 413))
    created["responses"][200] = {"model": CollectionCreated, "description": "It already existed."}

    @r.post("/v1/collections", **created)
    async def create_collection(request: Request, who: Principal = p.access.requires("admin")) -> JSONResponse:
        """Create a collection (201), or confirm it exists (200)."""
        body = await http.read_json(request, CollectionRequest, max_body)
        with audited(request, who, body.name):
            info = await p.call(p.handles["encoder"].info.remote(), "encoder")
            made = await p.call(search.create_collection.remote(p.collection(who, body.name, "name"), info["dim"],
                                                                info["encoder"]), "search")
        out = CollectionCreated(name=body.name, created=made)
        return JSONResponse(out.model_dump(), status_code=201 if made else 200)

    @r.delete("/v1/collections/{name}", **operation(response=CollectionDropped, errors=(400, 404)))
    async def drop_collection(request: Request, name: Annotated[str, Path(pattern=COLLECTION_PATTERN)],
                              who: Principal = p.access.requires("admin")) -> CollectionDropped:
        """Drop a collection and everything in it (404 when missing)."""
        with audited(request, who, name):
            if not await p.call(search.drop_collection.remote(p.collection(who, name, "name")), "search"):
                raise NotFoundError(f"collection '{name}' does not exist", param="name")
        return CollectionDropped(name=name, dropped=True)

    return r


@contextmanager
def audited(request: Request, who: Principal, target: str) -> Iterator[None]:
    """Audit a write or admin call with its outcome (the error's status when it fails)."""
    try:
        yield
    except RagServeError as e:
        Access.audit(request, who, target, e.status)
        raise
    except Exception:
        Access.audit(request, who, target, 500)
        raise
    Access.audit(request, who, target, 200)
