"""Before/after: dense retrieval of held-out questions with the current and the tuned encoder.

Both encoders embed the same chunks (the collection's, as the server embeds them) and the same
questions (normalised as the server's preprocess does), and rank every chunk exactly (cosine,
the FLAT index's answer); documents are ranked by their best chunk. The scores are ``ragserve
eval``'s (``deployments/evaluation/metrics.py``): recall@1/5/10, MRR, nDCG@10, overall, per
language and per question type, with a paired bootstrap of the nDCG@10 difference. Only held-out
questions are scored: a question trained on would measure memory, not retrieval.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from deployments.evaluation import metrics
from deployments.preprocess.text import normalize
from deployments.tune.data import Chunk, HeldOut

ROWS = ("before", "after")
DEPTH = 10


def rankings(model_path: str, chunks: Sequence[Chunk], questions: Sequence[HeldOut], max_seq_length: int = 256,
             batch_size: int = 64) -> list[list[str]]:
    """Each question's top documents (by best chunk) under the encoder at ``model_path``."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path, device="cpu")
    model.max_seq_length = max_seq_length

    def embed(texts: list[str]) -> Any:
        return model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                            show_progress_bar=False)

    c = embed([ch.text for ch in chunks])
    q = embed([normalize(h.question) for h in questions])
    order = np.argsort(-(q @ c.T), axis=1, kind="stable")
    out = []
    for row in order:
        docs: list[str] = []
        for i in row:
            if chunks[i].doc_id not in docs:
                docs.append(chunks[i].doc_id)
                if len(docs) == DEPTH:
                    break
        out.append(docs)
    return out


def compare(before: str, after: str, chunks: Sequence[Chunk], heldout: Sequence[HeldOut],
            max_seq_length: int = 256) -> dict[str, Any]:
    """Scores of the encoders at paths ``before`` and ``after`` on ``heldout`` (see the module docstring).

    Returns:
        ``questions`` (n), ``before``/``after`` (``metrics.summarize``: overall, by_lang, by_type),
        ``gain`` (after - before, overall, per metric) and ``ndcg_bootstrap`` (paired, 95 %).
    """
    if not heldout:
        raise ValueError("no held-out questions to evaluate on")
    ranked = {row: rankings(path, chunks, heldout, max_seq_length) for row, path in zip(ROWS, (before, after),
                                                                                          strict=True)}
    records = [{"id": h.id, "lang": h.lang, "type": h.type,
                "scores": {row: metrics.score(ranked[row][i], h.relevant) for row in ROWS}}
               for i, h in enumerate(heldout)]
    out: dict[str, Any] = {"questions": len(records)}
    for row in ROWS:
        out[row] = metrics.summarize(records, row)
    out["gain"] = {m: out["after"]["overall"][m] - out["before"]["overall"][m] for m in metrics.METRICS}
    out["ndcg_bootstrap"] = metrics.paired_bootstrap([r["scores"]["after"]["ndcg@10"] for r in records],
                                                     [r["scores"]["before"]["ndcg@10"] for r in records])
    return out


def table(report: dict[str, Any]) -> str:
    """The comparison as Markdown: overall and per language / type, nDCG@10 and R@1."""
    lines = ["| held-out questions | n | nDCG@10 before | after | R@1 before | after |", "|---|---|---|---|---|---|"]

    def row(label: str, n: int, b: dict[str, float], a: dict[str, float]) -> None:
        lines.append(f"| {label} | {n} | {b['ndcg@10']:.3f} | {a['ndcg@10']:.3f} | {b['recall@1']:.3f} | "
                     f"{a['recall@1']:.3f} |")

    row("all", report["questions"], report["before"]["overall"], report["after"]["overall"])
    for group in ("by_lang", "by_type"):
        for name, b in report["before"][group].items():
            row(name, b["n"], b, report["after"][group][name])
    bs = report["ndcg_bootstrap"]
    lines.append(f"\nnDCG@10 gain {bs['diff']:+.3f} (95 % interval {bs['low']:+.3f} to {bs['high']:+.3f}, "
                 f"paired bootstrap over questions)")
    return "\n".join(lines)
