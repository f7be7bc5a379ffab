"""Per-key limits on a fake clock: request rate, token quota, generations at once."""

from __future__ import annotations

import pytest

from deployments.errors import RateLimitedError
from deployments.ingress.auth import OPEN, Limits
from deployments.ingress.limits import RateLimiter, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def key(**limits: object):
    return OPEN.model_copy(update={"key_id": "k1", "limits": Limits(**limits)})


def test_bucket_refills_at_its_rate_up_to_its_capacity() -> None:
    b = TokenBucket(rate=2.0, capacity=4.0, stamp=0.0)
    assert [b.take(1, 0.0) for _ in range(4)] == [0.0] * 4
    assert b.take(1, 0.0) == pytest.approx(0.5)  # one token every 0.5 s
    assert b.take(1, 0.5) == 0.0
    b.give(10, 0.5)
    assert b.tokens == 4.0


def test_request_rate_with_burst_and_retry_after() -> None:
    clock, lim = Clock(), RateLimiter()
    lim.clock = clock
    who = key(requests_per_s=1.0, burst=3)
    for _ in range(3):
        lim.request(who)
    with pytest.raises(RateLimitedError) as err:
        lim.request(who)
    assert err.value.status == 429 and err.value.retry_after_s == 1
    clock.t += 1.0
    lim.request(who)


def test_other_keys_are_not_affected() -> None:
    lim = RateLimiter(Clock())
    busy, quiet = key(requests_per_s=1.0, burst=1), key(requests_per_s=1.0, burst=1).model_copy(update={"key_id": "k2"})
    lim.request(busy)
    with pytest.raises(RateLimitedError):
        lim.request(busy)
    lim.request(quiet)


def test_tokens_are_reserved_up_front_and_the_unused_part_refunded() -> None:
    clock = Clock()
    lim, who = RateLimiter(clock), key(tokens_per_min=600)  # 10 tokens/s
    lim.start_generation(who, 500)
    with pytest.raises(RateLimitedError) as err:
        lim.start_generation(who, 200)  # 100 left, 200 asked: 10 s to wait
    assert err.value.retry_after_s == 10
    lim.end_generation(who, reserved=500, used=100)  # 400 come back
    lim.start_generation(who, 450)


def test_generations_at_once() -> None:
    lim, who = RateLimiter(Clock()), key(concurrent_generations=2)
    lim.start_generation(who, 10)
    lim.start_generation(who, 10)
    with pytest.raises(RateLimitedError, match="2 generations"):
        lim.start_generation(who, 10)
    lim.end_generation(who, 10, 10)
    lim.start_generation(who, 10)


def test_unlimited_keys_are_never_refused() -> None:
    lim = RateLimiter(Clock())
    for _ in range(1000):
        lim.request(OPEN)
        lim.start_generation(OPEN, 10_000)
