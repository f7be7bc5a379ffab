"""Run the evaluation against a ragserve server over HTTP.

1. load the passages into a collection with the document API, in batches;
2. for each retrieval mode, ``POST /v1/retrieve`` every question (``top_k`` 10, bounded
   concurrency) and score the returned documents (:mod:`deployments.evaluation.metrics`);
3. for each condense mode, ``POST /v1/retrieve`` the follow-up turn of every conversation with
   its history and score it the same way (:mod:`deployments.evaluation.conversational`);
4. on a spread of N questions, ``POST /v1/query`` (hybrid, greedy) and check whether the answer
   cites / is drawn from a retrieved source, whether that source is a relevant one, and whether
   the expected answer string is in the answer.

Everything the report says comes from the server's responses; nothing is computed in-process
that the server is supposed to do.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from deployments.evaluation import conversational, metrics
from deployments.evaluation.client import EvalError, gather_bounded, message, served_mode
from deployments.evaluation.client import post as _post
from deployments.evaluation.dataset import EvalSet, Question, fold
from deployments.preprocess.terms import key_terms

MODES: tuple[str, ...] = ("dense", "lexical", "hybrid")
#: Boolean checks of the grounding step, in report order.
GROUNDING_CHECKS: tuple[str, ...] = ("retrieved_relevant", "cites_source", "grounded", "cited_relevant",
                                     "grounded_relevant", "answer_match")
@dataclass(frozen=True)
class EvalOptions:
    """Knobs of one evaluation run (all of them are recorded in the report)."""

    collection: str = "eval"
    modes: tuple[str, ...] = MODES
    top_k: int = 10
    generate: int = 20  # questions for the grounding check; 0 skips it
    max_tokens: int = 64
    concurrency: int = 4
    # condense modes scored on the conversations (plus "reference"); empty skips them
    condense: tuple[str, ...] = conversational.ROWS
    batch_size: int = 64  # documents per POST /v1/documents (the API takes at most 64)
    api_key: str | None = field(default=None, repr=False)  # sent as a bearer token; never in the report
    timeout_s: float = 180.0
    retries: int = 2


# --------------------------------------------------------------------------- steps
async def load_passages(client: httpx.AsyncClient, evalset: EvalSet, opts: EvalOptions) -> dict[str, Any]:
    """Create the collection (if needed) and upsert every passage.

    Returns:
        documents per status (added/updated/unchanged), ``chunks`` written or kept, ``rows`` in
        the collection afterwards and the seconds taken.
    """
    start = time.perf_counter()
    await _post(client, "/v1/collections", {"name": opts.collection}, opts.retries)
    counts: Counter[str] = Counter()
    ps = evalset.passages
    for i in range(0, len(ps), opts.batch_size):
        batch = ps[i:i + opts.batch_size]
        body = {"collection": opts.collection, "documents": [p.document() for p in batch]}
        res = await _post(client, "/v1/documents", body, opts.retries)
        got = {r["id"] for r in res["results"]}
        if got != {p.id for p in batch}:
            raise EvalError(f"POST /v1/documents answered for other ids than sent: {sorted(got)[:5]}")
        counts.update(r["status"] for r in res["results"])
        counts["chunks"] += sum(r["chunks"] for r in res["results"])
    return {**dict(sorted(counts.items())), "rows": await _rows(client, opts.collection),
            "seconds": round(time.perf_counter() - start, 2)}


async def _rows(client: httpx.AsyncClient, collection: str) -> int | None:
    """Rows in the collection, to spot leftovers of an older set (they would be retrieved too)."""
    r = await client.get("/v1/collections")
    if not r.is_success:
        raise EvalError(f"GET /v1/collections failed with {r.status_code}: {message(r)}")
    return next((c.get("rows") for c in r.json()["collections"] if c["name"] == collection), None)


async def retrieve_all(client: httpx.AsyncClient, questions: Sequence[Question], mode: str,
                       opts: EvalOptions) -> list[tuple[list[str], str]]:
    """For each question, the ranked document ids (deduplicated, best first) the server returns
    and the mode it searched with (a hybrid query in a language outside ``search.dense_languages``
    is searched lexically; anything else differing from the asked mode is an error)."""
    async def one(q: Question) -> tuple[list[str], str]:
        body = {"question": q.question, "top_k": opts.top_k, "mode": mode, "collection": opts.collection}
        res = await _post(client, "/v1/retrieve", body, opts.retries)
        return metrics.dedupe(s["doc_id"] for s in res["sources"]), served_mode(res, mode)

    return await gather_bounded(questions, one, opts.concurrency)


def spread(items: Sequence[Any], n: int) -> list[Any]:
    """``n`` items evenly spaced over ``items`` (all when n >= len): covers every language file
    and question type of a set ordered by file, where the first n would cover one."""
    if n >= len(items):
        return list(items)
    return [items[i * len(items) // n] for i in range(n)]


async def ground_one(client: httpx.AsyncClient, q: Question, opts: EvalOptions) -> dict[str, Any]:
    """Ask one question end to end (hybrid, greedy) and check the answer against the labels."""
    body = {"question": q.question, "mode": "hybrid", "collection": opts.collection,
            "max_tokens": opts.max_tokens, "temperature": 0.0}
    res = await _post(client, "/v1/query", body, opts.retries)
    docs = {s["n"]: s["doc_id"] for s in res["sources"]}
    rel = set(q.relevant)
    cited, grounded = list(res["cited"]), list(res["grounded_in"])
    return {
        "id": q.id, "lang": q.lang, "type": q.type, "expected": q.answer, "answer": res["answer"],
        "sources": [docs[n] for n in sorted(docs)], "cited": cited, "grounded_in": grounded,
        "retrieved_relevant": bool(rel.intersection(docs.values())),
        "cites_source": bool(cited),
        "grounded": bool(grounded),
        "cited_relevant": any(docs.get(n) in rel for n in cited),
        "grounded_relevant": any(docs.get(n) in rel for n in grounded),
        "answer_match": fold(q.answer) in fold(res["answer"]),
    }


async def grounding(client: httpx.AsyncClient, questions: Sequence[Question],
                    opts: EvalOptions) -> dict[str, Any]:
    """The grounding check on ``opts.generate`` questions: per-question records and the rate of
    each check (share of the questions passing it)."""
    picked = spread(questions, opts.generate)
    start = time.perf_counter()
    records = await gather_bounded(picked, lambda q: ground_one(client, q, opts), opts.concurrency)
    rates = {c: sum(r[c] for r in records) / len(records) for c in GROUNDING_CHECKS}
    return {"n": len(records), "rates": rates, "seconds": round(time.perf_counter() - start, 2),
            "questions": records}


# --------------------------------------------------------------------------- the run
async def run(url: str, evalset: EvalSet, opts: EvalOptions = EvalOptions(),
              transport: httpx.AsyncBaseTransport | None = None) -> dict[str, Any]:
    """The whole evaluation; returns the report (see :func:`format_table` for its summary).

    Args:
        url: the server's base URL.
        evalset: the validated set.
        opts: run options.
        transport: an httpx transport to use instead of the network (tests).

    Raises:
        EvalError: a request failed (after retries) or the server's answer does not fit.
    """
    unknown = set(opts.modes) - set(MODES)
    if unknown or not opts.modes:
        raise ValueError(f"modes must be a non-empty subset of {MODES}, got {opts.modes}")
    conversational.check_rows(opts.condense)
    qs = evalset.questions
    headers = {"authorization": f"Bearer {opts.api_key}"} if opts.api_key else {}
    async with httpx.AsyncClient(base_url=url, timeout=opts.timeout_s, transport=transport, headers=headers) as client:
        loaded = await load_passages(client, evalset, opts)
        per_q: list[dict[str, Any]] = [{"id": q.id, "lang": q.lang, "type": q.type, "relevant": q.relevant,
                                        "twins": evalset.twins(q), "names_code": bool(key_terms(q.question)),
                                        "ranked": {}, "scores": {}} for q in qs]
        modes: dict[str, Any] = {}
        for mode in opts.modes:
            start = time.perf_counter()
            served: dict[str, int] = {}
            for rec, q, (ranked, how) in zip(per_q, qs, await retrieve_all(client, qs, mode, opts), strict=True):
                rec["ranked"][mode] = ranked
                rec["scores"][mode] = metrics.score(ranked, q.relevant) | {
                    metrics.TWIN: metrics.above_twins(ranked, q.relevant, rec["twins"])}
                served[how] = served.get(how, 0) + 1
            modes[mode] = metrics.summarize(per_q, mode, metrics.QUESTION_METRICS) | {
                "seconds": round(time.perf_counter() - start, 2), "served_as": served}
        convs = None
        if opts.condense and evalset.conversations:
            convs = await conversational.evaluate(
                client, evalset.conversations, opts.condense, collection=opts.collection, top_k=opts.top_k,
                concurrency=opts.concurrency, retries=opts.retries)
        ground = await grounding(client, qs, opts) if opts.generate > 0 else None
    config = {"url": url, "data": str(evalset.directory), **{k: v for k, v in asdict(opts).items() if k != "api_key"},
              "passages": len(evalset.passages), "questions": len(qs),
              "conversations": len(evalset.conversations)}
    return {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "config": config,
            "load": loaded, "modes": modes, "questions": per_q, "conversations": convs, "grounding": ground}


def run_sync(url: str, evalset: EvalSet, opts: EvalOptions = EvalOptions()) -> dict[str, Any]:
    """:func:`run` from synchronous code."""
    return asyncio.run(run(url, evalset, opts))


# --------------------------------------------------------------------------- output
#: Scores shown per question type and per code group in the second table.
_DETAIL = ("recall@1", "mrr", metrics.TWIN)


def _detail_table(modes: dict[str, Any]) -> list[str]:
    """Rows: modes; columns: R@1, MRR and the twin rate per question type, then for questions
    that name a code (version, identifier, year, model number) and those that name none."""
    first = next(iter(modes.values()))
    groups = [("by_type", g) for g in first["by_type"]] + [("by_code", g) for g in first.get("by_code", {})]
    head = [f"{metrics.LABELS[m]} {g}" for _, g in groups for m in _DETAIL]
    widths = [max(7, len(h)) for h in head]
    lines = [f"{'mode':8}" + " ".join(f"{h:>{w}}" for h, w in zip(head, widths, strict=True))]
    for mode, agg in modes.items():
        vals = [agg[k][g][m] for k, g in groups for m in _DETAIL]
        lines.append(f"{mode:8}" + " ".join(f"{v:>{w}.3f}" for v, w in zip(vals, widths, strict=True)))
    return lines


def format_table(report: dict[str, Any]) -> str:
    """Rows: modes; columns: recall@1/5/10, MRR, nDCG@10, the twin rate, then nDCG@10 per
    language and per question type; then R@1, MRR and twin rate per question type and code group
    (:func:`_detail_table`); then the grounding rates (if the check ran) and what each step took;
    then the conversations' table (:func:`conversational.format_table`), if they ran."""
    modes = report["modes"]
    first = next(iter(modes.values()))
    langs, types = list(first["by_lang"]), list(first["by_type"])
    names = [m for m in metrics.QUESTION_METRICS if m in first["overall"]]
    head = [metrics.LABELS[m] for m in names] + [f"nDCG {g}" for g in langs + types]
    widths = [max(7, len(h)) for h in head]
    lines = [f"{'mode':8}" + " ".join(f"{h:>{w}}" for h, w in zip(head, widths, strict=True))]
    for mode, agg in modes.items():
        vals = [agg["overall"][m] for m in names]
        vals += [agg["by_lang"][g]["ndcg@10"] for g in langs] + [agg["by_type"][g]["ndcg@10"] for g in types]
        lines.append(f"{mode:8}" + " ".join(f"{v:>{w}.3f}" for v, w in zip(vals, widths, strict=True)))
    if metrics.TWIN in first["overall"]:
        lines += ["", *_detail_table(modes)]
    counts = ", ".join(f"{g}={first[k][g]['n']}" for k in ("by_lang", "by_type", "by_code") for g in first.get(k, {}))
    lines.append(f"({report['config']['questions']} questions: {counts}; "
                 f"{report['config']['passages']} passages in '{report['config']['collection']}')")
    for mode, agg in modes.items():
        if set(agg.get("served_as", {})) - {mode}:
            lines.append(f"{mode}: searched as {agg['served_as']} (search.dense_languages)")
    g = report.get("grounding")
    if g:
        rates = ", ".join(f"{c} {v:.0%}" for c, v in g["rates"].items())
        lines.append(f"grounding on {g['n']} questions (hybrid, max_tokens "
                     f"{report['config']['max_tokens']}): {rates}")
    load = report["load"]
    statuses = ", ".join(f"{load[k]} {k}" for k in ("added", "updated", "unchanged") if k in load)
    took = ", ".join([f"load {load['seconds']:.1f}", *(f"{m} {a['seconds']:.1f}" for m, a in modes.items())]
                     + ([f"grounding {g['seconds']:.1f}"] if g else []))
    lines.append(f"passages: {statuses}; seconds: {took}")
    if report.get("conversations"):
        lines += ["", conversational.format_table(report["conversations"])]
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: Path) -> Path:
    """Write the report as JSON (parent directories created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False), encoding="utf-8")
    return path
