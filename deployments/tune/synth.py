"""Training pairs from a running ragserve, over its public HTTP API.

* **Synthetic questions** (InPars/GPL-style): the deployed generator writes questions for sampled
  chunks (``POST /v1/generate``, many at once, seeded), and a question is kept only if lexical
  search (``POST /v1/retrieve``, ``mode: lexical``) ranks its own chunk in the top ``k``: a
  question its passage does not plainly answer is noise to train on.
* **Positives and hard negatives**: the current encoder's own ranking (``mode: dense``) gives, for
  each question, the best chunk of its document (a labelled question names a document, not a
  chunk) and the chunks of other documents it ranks highest: the mistakes a better encoder must
  stop making. A reranker reorders the hybrid search's candidates, so its negatives come from
  that ranking (``negatives_from: hybrid``), where near-duplicates of the answer rank highest.

Everything goes through the server like any client's requests (keys, tenants and limits apply),
so what is mined is what the server really ranks.
"""

from __future__ import annotations

import logging
import random
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from deployments.evaluation.client import EvalError, gather_bounded, post
from deployments.preprocess.text import language
from deployments.tune.data import Chunk, Labelled, Pair

log = logging.getLogger(__name__)

SYSTEM = "You write the questions people type into a search box."
PROMPT = ("Passage:\n{text}\n\nWrite one question that this passage answers, as a user would ask it. "
          "Reply with the question only.")
_LEAD = re.compile(r"^\s*(?:question\s*[:：]|q\s*[:：]|\d+[.)]|[-*•])\s*", re.IGNORECASE)


@dataclass(frozen=True)
class SynthOptions:
    """How synthetic questions are written and filtered."""

    per_chunk: int = 2
    max_chunks: int | None = None  # a seeded sample of the chunks (None: all)
    languages: tuple[str, ...] = ("en", "mixed")  # chunks in languages the encoder understands
    max_tokens: int = 48
    temperature: float = 0.8
    keep_top_k: int = 5  # the lexical round trip: own chunk within this rank
    negatives: int = 3
    negatives_from: str = "dense"  # the ranking mined for hard negatives: dense (the encoder's) or hybrid
    concurrency: int = 8
    seed: int = 0
    retries: int = 3


def clean_question(text: str) -> str | None:
    """The question in a generation, or None when there is none worth training on."""
    for line in text.strip().splitlines():
        q = _LEAD.sub("", line).strip().strip("\"'“”「」").strip()
        if q:
            break
    else:
        return None
    if not q.endswith(("?", "？")):
        return None
    words = len(q.split()) if language(q) == "en" else len(q)
    return q if 4 <= words <= 60 and len(q) <= 400 else None


def sample_chunks(chunks: Sequence[Chunk], opts: SynthOptions) -> list[Chunk]:
    """The chunks questions are written for: those in ``opts.languages``, a seeded sample."""
    eligible = [c for c in chunks if language(c.text) in opts.languages]
    if opts.max_chunks is not None and len(eligible) > opts.max_chunks:
        eligible = random.Random(opts.seed).sample(eligible, opts.max_chunks)
    return eligible


async def write_questions(client: httpx.AsyncClient, chunks: Sequence[Chunk],
                          opts: SynthOptions) -> list[tuple[Chunk, str]]:
    """``opts.per_chunk`` generations per chunk; the (chunk, question) pairs that hold a question."""
    jobs = [(c, i) for c in chunks for i in range(opts.per_chunk)]

    async def one(job: tuple[Chunk, int]) -> tuple[Chunk, str | None]:
        chunk, i = job
        body = {"prompt": PROMPT.format(text=chunk.text), "system": SYSTEM, "max_tokens": opts.max_tokens,
                "temperature": opts.temperature, "seed": seed_of(opts.seed, chunk.id, i)}
        res = await post(client, "/v1/generate", body, opts.retries)
        return chunk, clean_question(res["text"])

    out = await gather_bounded(jobs, one, opts.concurrency)
    seen: set[tuple[str, str]] = set()
    kept = []
    for chunk, q in out:
        if q is not None and (chunk.id, q.casefold()) not in seen:
            seen.add((chunk.id, q.casefold()))
            kept.append((chunk, q))
    return kept


def seed_of(seed: int, chunk_id: str, i: int) -> int:
    """A stable sampling seed per (run seed, chunk, try): Python's ``hash`` of a string changes between runs."""
    return zlib.crc32(f"{seed}:{chunk_id}:{i}".encode())


async def retrieve(client: httpx.AsyncClient, collection: str, question: str, mode: str, top_k: int,
                   retries: int) -> list[dict[str, Any]]:
    body = {"question": question, "collection": collection, "mode": mode, "top_k": top_k}
    return (await post(client, "/v1/retrieve", body, retries))["sources"]


async def roundtrip(client: httpx.AsyncClient, collection: str, candidates: Sequence[tuple[Chunk, str]],
                    opts: SynthOptions) -> list[tuple[Chunk, str]]:
    """The candidates whose own chunk lexical search ranks within ``opts.keep_top_k``."""
    async def keep(item: tuple[Chunk, str]) -> bool:
        hits = await retrieve(client, collection, item[1], "lexical", opts.keep_top_k, opts.retries)
        return any(h["id"] == item[0].id for h in hits)

    verdicts = await gather_bounded(candidates, keep, opts.concurrency)
    return [c for c, ok in zip(candidates, verdicts, strict=True) if ok]


async def with_negatives(client: httpx.AsyncClient, collection: str, questions: Sequence[tuple[str, str, str | None]],
                         texts: dict[str, str], opts: SynthOptions, origin: str) -> list[Pair]:
    """Pairs of (question, document id, positive chunk id or None): the positive (the document's best
    chunk by the current encoder when not given) and the current encoder's top chunks of other
    documents as negatives. A labelled question whose document the encoder does not rank in its
    top ``opts.negatives + 10`` and whose chunk is unknown is dropped (logged)."""
    depth = opts.negatives + 10

    async def one(item: tuple[str, str, str | None]) -> Pair | None:
        question, doc_id, positive = item
        hits = await retrieve(client, collection, question, opts.negatives_from, depth, opts.retries)
        if positive is None:
            positive = next((h["id"] for h in hits if h["doc_id"] == doc_id), None)
        if positive is None:
            return None
        own = texts.get(positive, "")
        negs = [h["id"] for h in hits if h["doc_id"] != doc_id and h["text"] != own][: opts.negatives]
        return Pair(question=question, positive=positive, doc_id=doc_id, negatives=tuple(negs),
                    origin=origin, lang=language(question))  # type: ignore[arg-type]

    pairs = await gather_bounded(questions, one, opts.concurrency)
    dropped = sum(p is None for p in pairs)
    if dropped:
        log.warning("%d %s questions dropped: their document is not in the encoder's top %d", dropped, origin, depth)
    return [p for p in pairs if p is not None]


async def build_pairs(client: httpx.AsyncClient, collection: str, chunks: Sequence[Chunk],
                      labelled: Sequence[Labelled], synthetic: bool, opts: SynthOptions) -> tuple[list[Pair], dict]:
    """Labelled and (if ``synthetic``) synthetic pairs with hard negatives; and what was kept at each step."""
    texts = {c.id: c.text for c in chunks}
    by_id = {c.id: c for c in chunks}
    stats: dict[str, Any] = {}
    pairs = await with_negatives(client, collection, [(x.question, x.doc_id, None) for x in labelled], texts,
                                 opts, "labelled")
    stats["labelled"] = {"given": len(labelled), "kept": len(pairs)}
    if synthetic:
        sample = sample_chunks(chunks, opts)
        written = await write_questions(client, sample, opts)
        kept = await roundtrip(client, collection, written, opts)
        synth = await with_negatives(client, collection, [(q, c.doc_id, c.id) for c, q in kept], texts, opts,
                                     "synthetic")
        stats["synthetic"] = {"chunks": len(sample), "generated": len(sample) * opts.per_chunk,
                              "questions": len(written), "roundtrip_kept": len(kept), "pairs": len(synth)}
        pairs += synth
    if not pairs:
        raise EvalError("no training pair survived: see the counts above (is the collection empty?)")
    missing = {p.positive for p in pairs} - set(by_id)
    if missing:
        raise EvalError(f"the server returned chunks that are not in the collection read from Milvus: {sorted(missing)[:3]}")
    return pairs, stats
