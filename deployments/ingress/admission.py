"""Admission of retrievals against a latency budget (``ingress.retrieve_budget_s``).

A retrieval (preprocess, encoder, search, optional rerank) shares the retrieval stages, and the
CPUs under them, with the retrievals already in flight. By Little's law its latency is about
``(retrievals in flight + 1) x s``, where ``s`` is the time the stages need per retrieval at the
current parallelism (1 / their service rate). ``s`` is measured, not configured: each finished
retrieval contributes ``latency / (mean number in flight during its life)``, which is its
latency when it ran alone and shrinks as concurrent retrievals overlap in the pipeline, so the
estimate follows the machine (a slow CPU, a generation sharing the cores) without a fixed rate.
``s`` is the median of the last :data:`SAMPLES` contributions: one outlier (the first retrieval
of a fresh replica, which loads its tokenizers and Milvus collection) must not make the estimate
refuse concurrent retrievals until many lone ones have averaged it away.

The estimate is a mean; the budget is meant for nearly every admitted retrieval. So each retrieval
admitted near the budget (a scaled estimate of at least :data:`NEAR` of it) also records how far
off its estimate was (latency / estimate at admission), and the estimate is scaled by the
:data:`QUANTILE` of the last :data:`ERRORS` of these ratios within :data:`ERRORS_WINDOW_S` (at
least 1) before it is compared with the budget. Near the budget as scaled, so that a large margin
learnt in a flood is corrected by the retrievals it admits afterwards, and only recent ratios: a
flood's margin otherwise outlived it, refusing most of a later closed loop (465 admitted of 8,395
requests in 20 s). Only those near the budget: a lone retrieval's ratio is noisy (one slow search
is 3x the median) but far from the budget either way, and counting it shed 16 % of the requests
at an offered load equal to the capacity. Measured on a 2-core AMD EPYC (Zen 4) without that
scaling: uncached retrievals at 2x and 4x capacity were admitted with p50 961 / 949 ms but p99
1311 / 1722 ms against a 1 s budget: the latencies cluster around the mean the estimate targets.
The 99th percentile, not the 95th: with the 95th of 128 a flood of cached retrievals at 2x and 4x
capacity was admitted with p99 1199 / 1156 ms, with the 99th of 512 813 / 765 ms
(docs/reliability.md, "Retrieval overload table").

A retrieval whose estimate exceeds the budget is refused at once with 503 + ``Retry-After``
instead of waiting in the stages' Serve queues, so the retrievals admitted keep their latency.
Up to ``min_in_flight`` retrievals are always admitted, however slow the machine: the budget is for
queueing past a floor of parallelism, not for a few callers whose retrievals are slow because the
machine is (a rolling update restarting every stage measured 0.8 s per lone retrieval on 2 cores,
and three sequential clients were refused at 1 s). This bounds what this ingress replica can queue
at the retrieval stages to about ``max(min_in_flight, budget / s)`` retrievals.

Pure bookkeeping with an injectable clock (unit-tested with hand-computed values).
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from deployments.errors import OverloadedError

#: Service-time contributions the estimate is the median of.
SAMPLES = 16
#: Prediction errors (latency / estimate at admission) the estimate's margin is a quantile of.
ERRORS = 512
#: Which quantile of them. Retrievals admitted with a smaller estimate have slack, so the share of
#: all admitted retrievals within the budget is larger than this.
QUANTILE = 0.99
#: The share of the budget an estimate must reach for its error to count.
NEAR = 0.25
#: Errors needed before the margin applies (before that: 1).
MIN_ERRORS = 16
#: Seconds an error counts for: the margin describes the machine now, not the last flood.
ERRORS_WINDOW_S = 30.0


@dataclass
class _Ticket:
    """One admitted retrieval: when it started and the in-flight area already accumulated."""

    start: float
    area: float
    estimate: float  # the estimate it was admitted with (unscaled; 0 before any measurement)
    scaled: float  # ... times the margin: what was compared with the budget


class RetrievalAdmission:
    """Retrievals in flight in this ingress replica, their measured service time, and the budget.

    Args:
        budget_s: the longest estimated latency a retrieval is admitted with (None: admit all).
        min_in_flight: retrievals in flight that are admitted whatever the estimate (at least 1).
        samples: how many recent service-time contributions the estimate is the median of.
        clock: monotonic seconds (injected by the tests).
    """

    def __init__(self, budget_s: float | None, min_in_flight: int = 1, samples: int = SAMPLES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.budget_s = budget_s
        self.min_in_flight = max(1, min_in_flight)
        self.clock = clock
        self.in_flight = 0
        self.recent: deque[float] = deque(maxlen=samples)
        self.errors: deque[tuple[float, float]] = deque(maxlen=ERRORS)  # (when, latency / estimate)
        self._area = 0.0  # integral of in_flight over time: the mean in flight over any interval
        self._t = clock()

    @property
    def service_s(self) -> float | None:
        """Time per retrieval at the observed parallelism (None until one was measured)."""
        return statistics.median(self.recent) if self.recent else None

    def _advance(self) -> float:
        now = self.clock()
        self._area += self.in_flight * (now - self._t)
        self._t = now
        return now

    def estimate_s(self) -> float:
        """Estimated mean latency of a retrieval admitted now (0 before the first measurement)."""
        return (self.in_flight + 1) * (self.service_s or 0.0)

    @property
    def margin(self) -> float:
        """What the estimate is scaled by before the budget: the :data:`QUANTILE` of the recent
        prediction errors of the last :data:`ERRORS_WINDOW_S`, at least 1 (1 while fewer than
        :data:`MIN_ERRORS`)."""
        horizon = self.clock() - ERRORS_WINDOW_S
        while self.errors and self.errors[0][0] < horizon:
            self.errors.popleft()
        if len(self.errors) < MIN_ERRORS:
            return 1.0
        ranked = sorted(ratio for _, ratio in self.errors)
        return max(1.0, ranked[min(len(ranked) - 1, int(QUANTILE * len(ranked)))])

    def refusal(self, wait_s: float = 0.0) -> OverloadedError | None:
        """The error a retrieval arriving now is refused with, or None when it would be admitted:
        refused when ``wait_s`` (time it already waited where this count cannot see) plus the
        estimate times the margin exceeds the budget while ``min_in_flight`` or more are in flight
        (503, Retry-After = the time the excess needs to drain, at least 1 s)."""
        return self._refusal(wait_s, self.margin)

    def _refusal(self, wait_s: float, margin: float) -> OverloadedError | None:
        if self.budget_s is None or self.in_flight < self.min_in_flight:
            return None
        est = wait_s + self.estimate_s() * margin
        if est <= self.budget_s:
            return None
        return OverloadedError(
            f"retrieval queue is full: about {est * 1000:.0f} ms for {self.in_flight} retrievals in flight "
            f"exceeds the budget of {self.budget_s:g}s (ingress.retrieve_budget_s)",
            retry_after_s=math.ceil(max(1.0, est - self.budget_s)))

    def admit(self, wait_s: float = 0.0) -> _Ticket:
        """Admit a retrieval, or refuse it (``wait_s``: see :meth:`refusal`).

        Raises:
            OverloadedError: :meth:`refusal` says so.
        """
        now = self._advance()
        margin = self.margin  # once per admission: it sorts the recent errors (the proxy's hot path)
        if (err := self._refusal(wait_s, margin)) is not None:
            raise err
        estimate = self.estimate_s()
        ticket = _Ticket(now, self._area, estimate, estimate * margin)
        self.in_flight += 1
        return ticket

    def done(self, ticket: _Ticket, measured: bool = True) -> None:
        """A retrieval ended; a successful one (``measured``) updates the service time."""
        now = self._advance()
        self.in_flight -= 1
        elapsed, area = now - ticket.start, self._area - ticket.area
        if not measured or elapsed <= 0 or area <= 0:
            return
        self.recent.append(elapsed * elapsed / area)  # latency / mean in flight during it
        if ticket.estimate > 0 and self.budget_s is not None and ticket.scaled >= NEAR * self.budget_s:
            self.errors.append((now, elapsed / ticket.estimate))

    @contextmanager
    def admitted(self) -> Iterator[None]:
        """Admit (or raise :class:`OverloadedError`) for the duration of the block; only a block
        that ends without an error is a service-time sample (a fast failure is not service)."""
        ticket = self.admit()
        ok = False
        try:
            yield
            ok = True
        finally:
            self.done(ticket, measured=ok)
