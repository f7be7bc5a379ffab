"""Admission against a time-to-first-token budget, with hand-computed estimates."""

from __future__ import annotations

import pytest

from deployments.errors import OverloadedError
from deployments.generator.admission import PrefillQueue


def test_estimate_counts_the_tokens_queued_ahead() -> None:
    q = PrefillQueue(rate_tokens_per_s=100, budget_s=10)
    assert q.estimate_s(500) == pytest.approx(5.0)
    assert q.admit(500) == 0
    assert q.estimate_s(300) == pytest.approx(8.0)
    assert q.admit(300) == 500


def test_over_budget_is_refused_with_the_time_to_drain() -> None:
    q = PrefillQueue(rate_tokens_per_s=100, budget_s=10)
    q.admit(900)
    with pytest.raises(OverloadedError) as err:
        q.admit(400)  # (900 + 400) / 100 = 13 s > 10 s
    assert err.value.status == 503 and err.value.retry_after_s == 3
    assert q.pending_tokens == 900  # a refused prompt leaves nothing behind


def test_a_lone_prompt_is_admitted_however_slow_the_machine() -> None:
    q = PrefillQueue(rate_tokens_per_s=10, budget_s=1)
    assert q.admit(2000) == 0  # 200 s estimated, but nothing queued ahead: a sequential client is served


def test_rate_follows_prompts_that_ran_alone() -> None:
    q = PrefillQueue(rate_tokens_per_s=100, budget_s=100, smoothing=0.5)
    ahead = q.admit(1000)
    q.started(1000, ahead, ttft_s=5.0)  # 200 tokens/s observed
    assert q.rate == pytest.approx(150.0) and q.pending_tokens == 0
    ahead = q.admit(1000)
    q.admit(1000)
    q.started(1000, ahead, ttft_s=1.0)  # was alone when admitted: counts
    assert q.rate == pytest.approx(575.0)
    q.started(1000, 1000, ttft_s=100.0)  # had 1000 tokens ahead: says nothing about the rate
    assert q.rate == pytest.approx(575.0) and q.pending_tokens == 0


def test_abandoned_and_tiny_prompts_do_not_move_the_rate() -> None:
    q = PrefillQueue(rate_tokens_per_s=100, budget_s=10)
    ahead = q.admit(500)
    q.started(500, ahead, ttft_s=None)  # cancelled before its first token
    ahead = q.admit(10)
    q.started(10, ahead, ttft_s=10.0)  # 10 tokens: fixed per-step costs dominate
    assert q.rate == 100 and q.pending_tokens == 0
