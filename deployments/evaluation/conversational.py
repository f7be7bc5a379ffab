"""The conversational part of ``ragserve eval``: retrieval for the follow-up turn of a chat.

For every labelled conversation and each condense mode, ``POST /v1/retrieve`` with the follow-up
as ``question``, the turns before it as ``history`` and ``condense`` set to the mode (``top_k``
10, hybrid, the evaluation collection), and score the returned documents against the passages
labelled for the follow-up, with the same metrics as the questions. The modes:

- ``last``: the follow-up alone is searched (what retrieval did before it followed conversations);
- ``join``: the server's deterministic fallback, recent user turns joined with the follow-up;
- ``rewrite``: the generator rewrites the conversation into a standalone question; the server
  falls back to ``join`` when that fails, and its response says which one it used;
- ``reference`` (not a server mode): the set's hand-written standalone question, searched alone
  with no history, i.e. what a perfect rewrite would find; ``rewrite`` is read against it.

Each response's ``search_query`` (the text searched and the condense mode used) is kept in the
report, so what was searched, and how often ``rewrite`` fell back, come from the server.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import httpx

from deployments.evaluation import metrics
from deployments.evaluation.client import EvalError, gather_bounded, post, served_mode
from deployments.evaluation.dataset import Conversation

#: The server's condense modes, in table order.
CONDENSE_MODES: tuple[str, ...] = ("last", "join", "rewrite")
#: The hand-written standalone question of each conversation, searched as a plain question.
REFERENCE = "reference"
#: Every row the conversational part can score (the default of ``ragserve eval --condense``).
ROWS: tuple[str, ...] = (*CONDENSE_MODES, REFERENCE)
#: Retrieval mode of every conversational request: the shipped default, sent explicitly so that a
#: server configured with another default does not silently change what is measured.
RETRIEVAL_MODE = "hybrid"
#: The condense modes a response may report for each row (``rewrite`` falls back to ``join``).
ACCEPTED: dict[str, tuple[str, ...]] = {"last": ("last",), "join": ("join",), "rewrite": ("rewrite", "join"),
                                        REFERENCE: ("last",)}


def check_rows(rows: Sequence[str]) -> None:
    """Raises ValueError unless every row is one of :data:`ROWS` (an empty list skips the part)."""
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise ValueError(f"condense modes must be among {ROWS}, got {tuple(rows)}")


def request_body(conv: Conversation, row: str, collection: str, top_k: int) -> dict[str, Any]:
    """The ``/v1/retrieve`` body of one conversation in one row."""
    body: dict[str, Any] = {"top_k": top_k, "mode": RETRIEVAL_MODE, "collection": collection}
    if row == REFERENCE:
        # No history: without one every condense mode searches the question as it is.
        return body | {"question": conv.standalone, "condense": "last"}
    history = [t.model_dump() for t in conv.history]
    return body | {"question": conv.question, "history": history, "condense": row}


def search_query(res: dict[str, Any], row: str) -> dict[str, str]:
    """The response's ``search_query`` (``text``, ``mode``), checked against the row asked for.

    Raises:
        EvalError: it is missing or malformed (a server without conversation support), or its mode
            is not one the row allows.
    """
    sq = res.get("search_query")
    if not isinstance(sq, dict) or not isinstance(sq.get("text"), str) or not isinstance(sq.get("mode"), str):
        raise EvalError("POST /v1/retrieve answered without a search_query {text, mode}: the server does not "
                        "take conversations (history, condense)")
    if sq["mode"] not in ACCEPTED[row]:
        asked = "last" if row == REFERENCE else row
        raise EvalError(f"asked to condense with {asked!r}, the server reports {sq['mode']!r}")
    return {"text": sq["text"], "mode": sq["mode"]}


async def retrieve_row(client: httpx.AsyncClient, convs: Sequence[Conversation], row: str, *, collection: str,
                       top_k: int, concurrency: int, retries: int) -> list[dict[str, Any]]:
    """One row for every conversation: the ranked document ids (deduplicated, best first), the
    ``search_query`` and the retrieval mode the server reports."""
    async def one(conv: Conversation) -> dict[str, Any]:
        res = await post(client, "/v1/retrieve", request_body(conv, row, collection, top_k), retries)
        return {"ranked": metrics.dedupe(s["doc_id"] for s in res["sources"]),
                "search_query": search_query(res, row), "retrieval_mode": served_mode(res, RETRIEVAL_MODE)}

    return await gather_bounded(convs, one, concurrency)


async def evaluate(client: httpx.AsyncClient, convs: Sequence[Conversation], rows: Sequence[str], *,
                   collection: str, top_k: int, concurrency: int, retries: int) -> dict[str, Any]:
    """Score every row on every conversation (the passages are already loaded).

    Returns:
        ``n``; per row the aggregates (:func:`metrics.summarize`), ``served_as`` (condense modes the
        server reports: ``rewrite`` vs ``join`` counts the fallbacks), ``retrieval_modes`` and the
        seconds taken; and per conversation its rankings, scores and searched queries.

    Raises:
        EvalError: a request failed (after retries) or a response does not fit the request.
    """
    check_rows(rows)
    records: list[dict[str, Any]] = [
        {"id": c.id, "lang": c.lang, "type": c.type, "relevant": c.relevant, "question": c.question,
         "standalone": c.standalone, "ranked": {}, "scores": {}, "search_query": {}} for c in convs]
    out: dict[str, Any] = {}
    for row in rows:
        start = time.perf_counter()
        got = await retrieve_row(client, convs, row, collection=collection, top_k=top_k,
                                 concurrency=concurrency, retries=retries)
        for rec, conv, res in zip(records, convs, got, strict=True):
            rec["ranked"][row] = res["ranked"]
            rec["scores"][row] = metrics.score(res["ranked"], conv.relevant)
            rec["search_query"][row] = res["search_query"]
        out[row] = metrics.summarize(records, row) | {
            "served_as": dict(Counter(r["search_query"]["mode"] for r in got)),
            "retrieval_modes": dict(Counter(r["retrieval_mode"] for r in got)),
            "seconds": round(time.perf_counter() - start, 2)}
    return {"n": len(records), "modes": out, "conversations": records}


# --------------------------------------------------------------------------- output
def format_table(part: dict[str, Any]) -> str:
    """Rows: condense modes; columns: recall@1/5/10, MRR, nDCG@10. Then recall@5 (the headline
    score of the follow-up turn) per language and per conversation type, one column per mode; then
    how ``rewrite`` was served and what each mode took."""
    modes = part["modes"]
    lines = [f"follow-up turns of {part['n']} conversations ({RETRIEVAL_MODE}; reference = the set's "
             "hand-written standalone question)"]
    widths = [max(7, len(metrics.LABELS[m])) for m in metrics.METRICS]
    lines.append(f"{'condense':10}" + " ".join(f"{metrics.LABELS[m]:>{w}}"
                                                for m, w in zip(metrics.METRICS, widths, strict=True)))
    for row, agg in modes.items():
        lines.append(f"{row:10}" + " ".join(f"{agg['overall'][m]:>{w}.3f}"
                                            for m, w in zip(metrics.METRICS, widths, strict=True)))
    first = next(iter(modes.values()))
    # (label, key, group): key None is the overall mean, else by_lang / by_type
    groups = [(f"overall ({part['n']})", None, "")]
    groups += [(f"{g} ({first[k][g]['n']})", k, g) for k in ("by_lang", "by_type") for g in first[k]]
    label_w = max(len(label) for label, _, _ in groups)
    lines += ["", f"{'recall@5':{label_w}}" + "".join(f" {row:>9}" for row in modes)]
    for label, k, g in groups:
        vals = [(agg["overall"] if k is None else agg[k][g])["recall@5"] for agg in modes.values()]
        lines.append(f"{label:{label_w}}" + "".join(f" {v:>9.3f}" for v in vals))
    notes = []
    if "rewrite" in modes:
        served = modes["rewrite"]["served_as"]
        notes.append(f"rewrite: {served.get('rewrite', 0)} rewritten, {served.get('join', 0)} fell back to join")
    notes.append("seconds: " + ", ".join(f"{row} {agg['seconds']:.1f}" for row, agg in modes.items()))
    lines.append("; ".join(notes))
    return "\n".join(lines)
