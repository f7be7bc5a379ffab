"""Per-key rate limits and quotas, checked before any work is done (429 + ``Retry-After``).

Three limits per key (``auth.Limits``): requests per second (a token bucket with a burst),
generated tokens per minute (a token bucket the request's ``max_tokens`` is reserved from up
front, the unused part refunded when the generation ends) and generations at once. They are
kept per ingress replica: with R replicas a key gets up to R times its limits (the cost of not
putting a shared store on every request's path; the replicas share the load evenly behind
Serve's proxy, so each sees about 1/R of a key's traffic).

Pure bookkeeping on an injected clock, unit-tested with hand-computed values.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from deployments.errors import RateLimitedError
from deployments.ingress.auth import Limits, Principal


@dataclass
class TokenBucket:
    """``capacity`` tokens, refilled at ``rate`` per second."""

    rate: float
    capacity: float
    tokens: float = field(default=-1.0)
    stamp: float = 0.0

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.capacity

    def _refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, n: float, now: float) -> float:
        """Take ``n`` tokens; returns 0, or the seconds until they would be there (nothing taken)."""
        self._refill(now)
        if self.tokens >= n:
            self.tokens -= n
            return 0.0
        return (n - self.tokens) / self.rate

    def give(self, n: float, now: float) -> None:
        self._refill(now)
        self.tokens = min(self.capacity, self.tokens + n)


@dataclass
class _KeyState:
    requests: TokenBucket | None
    tokens: TokenBucket | None
    running: int = 0


class RateLimiter:
    """Every key's buckets and running generations (one per ingress replica)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._keys: dict[str, _KeyState] = {}

    def _state(self, who: Principal) -> _KeyState:
        st = self._keys.get(who.key_id)
        if st is None:
            lim: Limits = who.limits
            now = self.clock()
            rps = None if lim.requests_per_s is None else TokenBucket(
                lim.requests_per_s, lim.burst or max(1.0, 2 * lim.requests_per_s), stamp=now)
            tpm = None if lim.tokens_per_min is None else TokenBucket(
                lim.tokens_per_min / 60.0, lim.tokens_per_min, stamp=now)
            st = self._keys[who.key_id] = _KeyState(rps, tpm)
        return st

    def request(self, who: Principal) -> None:
        """Count one request.

        Raises:
            RateLimitedError: over ``requests_per_s`` (Retry-After: until a request is allowed).
        """
        bucket = self._state(who).requests
        if bucket is not None:
            wait = bucket.take(1, self.clock())
            if wait:
                raise RateLimitedError(f"over this key's rate of {who.limits.requests_per_s:g} requests/s",
                                       retry_after_s=math.ceil(wait), hold_s=wait, tenant=who.label)

    def start_generation(self, who: Principal, max_tokens: int) -> None:
        """Reserve a generation of up to ``max_tokens``.

        Raises:
            RateLimitedError: too many generations at once, or not enough tokens left this minute.
        """
        st, lim = self._state(who), who.limits
        if lim.concurrent_generations is not None and st.running >= lim.concurrent_generations:
            raise RateLimitedError(f"this key already runs {st.running} generations (its limit)", retry_after_s=1)
        if st.tokens is not None:
            need = min(max_tokens, st.tokens.capacity)
            wait = st.tokens.take(need, self.clock())
            if wait:
                raise RateLimitedError(f"over this key's quota of {lim.tokens_per_min} generated tokens/min",
                                       retry_after_s=math.ceil(wait))
        st.running += 1

    def end_generation(self, who: Principal, reserved: int, used: int) -> None:
        """A generation ended: it no longer counts as running, and its unused tokens come back."""
        st = self._state(who)
        st.running = max(0, st.running - 1)
        if st.tokens is not None:
            st.tokens.give(max(0, min(reserved, st.tokens.capacity) - used), self.clock())
