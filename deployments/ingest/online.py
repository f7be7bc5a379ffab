"""``POST /v1/documents``: small upserts through the running stage deployments.

The same steps as bulk ingestion (:mod:`deployments.ingest.pipeline`), with each step done by
the stage that owns it: the encoder chunks (its tokenizer measures chunks) and embeds, the
preprocess stage makes the lexical tokens (so documents and questions are analysed by the same
code), and the search stage compares versions and writes each document in one request.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from deployments.config import AppConfig
from deployments.ingest import pipeline
from deployments.ingest.parsers import Document
from deployments.protocol.api import DocumentIn, DocumentResult

if TYPE_CHECKING:
    from deployments.ingress.pipeline import Pipeline

#: Documents of one request processed at once (each makes several stage calls).
CONCURRENCY = 4


class DocumentWriter:
    """Writes documents through the stages of a :class:`~deployments.ingress.pipeline.Pipeline`
    (each call under its deadline and error mapping)."""

    def __init__(self, pipeline: "Pipeline") -> None:
        self.p = pipeline
        self.cfg: AppConfig = pipeline.cfg

    async def upsert(self, collection: str, docs: list[DocumentIn]) -> list[DocumentResult]:
        """Upsert every document (at most :data:`CONCURRENCY` at a time); results in input order."""
        sem = asyncio.Semaphore(CONCURRENCY)

        async def one(d: DocumentIn) -> DocumentResult:
            async with sem:
                return await self._one(collection, d)

        return list(await asyncio.gather(*(one(d) for d in docs)))

    async def _one(self, collection: str, d: DocumentIn) -> DocumentResult:
        icfg, pcfg, h, call = self.cfg.ingest, self.cfg.preprocess, self.p.handles, self.p.call
        doc = Document(doc_id=d.id, source=d.source or d.id, title=d.title, text=d.text.strip(),
                       tags=tuple(d.tags), created_at=int(d.created_at or 0), acl=tuple(d.acl))
        live = self.p.encoder_tag
        stored = await call(h["search"].document_state.remote(collection, doc.doc_id, live), "search")
        chunks = await call(h["encoder"].chunk.remote(doc.text, icfg.chunk_tokens, icfg.chunk_overlap_tokens),
                            "encoder")
        p = pipeline.plan_chunks(doc, chunks, pcfg)
        if pipeline.is_unchanged(p, stored):
            return DocumentResult(id=doc.doc_id, status="unchanged", chunks=len(p.texts))
        lexical, embedded = await asyncio.gather(
            call(h["preprocess"].analyze.remote(list(p.texts)), "preprocess"), self.p.embed(list(p.texts)))
        if embedded.encoder != live:
            # Another encoder's replica answered (a switch of encoders is under way): the vectors go
            # to that encoder's copy, whose own chunks of the document are the ones replaced.
            stored = await call(h["search"].document_state.remote(collection, doc.doc_id, embedded.encoder), "search")
        rows = pipeline.rows(p, [list(v) for v in embedded.vectors], lexical)
        await call(h["search"].replace_document.remote(collection, doc.doc_id, rows, sorted(stored), embedded.encoder),
                   "search")
        return DocumentResult(id=doc.doc_id, status="updated" if stored else "added", chunks=len(rows))
