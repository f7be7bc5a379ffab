"""Admission of generations against a time-to-first-token budget.

A prompt waits for the prompts admitted before it to be prefilled, so its time to first token
is about (prompt tokens not yet prefilled, its own included) / (the engine's prefill rate).
The rate is measured when the replica starts (a warm-up prompt) and follows the generations
that run alone (exponential moving average), so a slow CPU gets a proportionally longer
estimate instead of a fixed deadline tuned to a fast one. A generation whose estimate exceeds
``generator.ttft_budget_s`` is refused at once with 503 + ``Retry-After`` (the time the queue
needs to drain to the budget), rather than admitted to wait: a lone sequential client is never
refused on a slow machine, a flood is shed before it queues.

Pure bookkeeping (no engine, no clock), unit-tested with hand-computed values.
"""

from __future__ import annotations

import math

from deployments.errors import OverloadedError

#: Prompts shorter than this say little about the prefill rate (fixed per-step costs dominate).
MIN_RATE_SAMPLE_TOKENS = 64


class PrefillQueue:
    """Prompt tokens admitted but not yet prefilled, and the engine's prefill rate.

    Args:
        rate_tokens_per_s: the prefill rate measured at start (tokens/s).
        budget_s: the longest estimated time to first token a generation is admitted with.
        smoothing: weight of a new rate sample in the moving average.
    """

    def __init__(self, rate_tokens_per_s: float, budget_s: float, smoothing: float = 0.2) -> None:
        if rate_tokens_per_s <= 0:
            raise ValueError("rate_tokens_per_s must be positive")
        self.rate = rate_tokens_per_s
        self.budget_s = budget_s
        self.smoothing = smoothing
        self.pending_tokens = 0

    def estimate_s(self, prompt_tokens: int) -> float:
        """Estimated time to first token of a prompt admitted now."""
        return (self.pending_tokens + prompt_tokens) / self.rate

    def admit(self, prompt_tokens: int) -> int:
        """Admit a prompt; returns the tokens queued ahead of it (pass them to :meth:`started`).

        Raises:
            OverloadedError: the estimate exceeds the budget (503, Retry-After = time to drain
                the queue down to the budget, at least 1 s).
        """
        est = self.estimate_s(prompt_tokens)
        if est > self.budget_s and self.pending_tokens > 0:
            wait = math.ceil(max(1.0, est - self.budget_s))
            raise OverloadedError(
                f"generator queue is full: about {est:.0f}s to the first token exceeds the budget of "
                f"{self.budget_s:g}s (generator.ttft_budget_s)", retry_after_s=wait)
        ahead = self.pending_tokens
        self.pending_tokens += prompt_tokens
        return ahead

    def started(self, prompt_tokens: int, ahead: int, ttft_s: float | None) -> None:
        """The prompt was prefilled (or abandoned: ``ttft_s`` None); a lone prompt updates the rate."""
        self.pending_tokens = max(0, self.pending_tokens - prompt_tokens)
        if ttft_s and ttft_s > 0 and ahead == 0 and prompt_tokens >= MIN_RATE_SAMPLE_TOKENS:
            self.rate += self.smoothing * (prompt_tokens / ttft_s - self.rate)
