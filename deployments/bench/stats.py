"""Report maths of the load tool: percentiles, step summaries, per-stage breakdown.

Pure functions over plain data, so they are unit-tested without a server.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

_SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def percentile(xs: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0–100) with linear interpolation; NaN for no data."""
    if not xs:
        return math.nan
    s = sorted(xs)
    k = (len(s) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


@dataclass
class Sample:
    """One request as the client saw it."""

    start: float
    latency: float
    ok: bool
    ttft: float | None = None
    output_tokens: int = 0
    error: str = ""


@dataclass
class StepResult:
    """One load step (a concurrency level or an arrival rate) of one target."""

    target: str
    mode: str
    load: float  # concurrency (closed loop) or requests/s offered (open loop)
    requests: int
    errors: int
    duration_s: float
    throughput_rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    ttft_p50_ms: float = math.nan
    ttft_p95_ms: float = math.nan
    tokens_per_s: float = math.nan
    stages_ms: dict[str, float] = field(default_factory=dict)
    bottleneck: str = ""
    error_kinds: dict[str, int] = field(default_factory=dict)

    def row(self) -> dict:
        """Flat dict for CSV (stage times become ``stage_<name>_ms`` columns)."""
        d = asdict(self)
        stages = d.pop("stages_ms")
        d["error_kinds"] = ";".join(f"{k}={v}" for k, v in sorted(self.error_kinds.items()))
        d.update({f"stage_{k}_ms": round(v, 2) for k, v in sorted(stages.items())})
        return d


def summarize(target: str, mode: str, load: float, samples: Sequence[Sample], duration_s: float) -> StepResult:
    """Aggregate the samples of one step; latency percentiles are over successful requests."""
    ok = [s for s in samples if s.ok]
    lat = [s.latency * 1000 for s in ok]
    ttft = [s.ttft * 1000 for s in ok if s.ttft is not None]
    tokens = sum(s.output_tokens for s in ok)
    kinds: dict[str, int] = {}
    for s in samples:
        if not s.ok:
            kinds[s.error] = kinds.get(s.error, 0) + 1
    return StepResult(
        target=target, mode=mode, load=load, requests=len(samples), errors=len(samples) - len(ok),
        duration_s=duration_s, throughput_rps=len(ok) / duration_s if duration_s > 0 else math.nan,
        p50_ms=percentile(lat, 50), p95_ms=percentile(lat, 95), p99_ms=percentile(lat, 99),
        ttft_p50_ms=percentile(ttft, 50), ttft_p95_ms=percentile(ttft, 95),
        tokens_per_s=tokens / duration_s if tokens and duration_s > 0 else math.nan, error_kinds=kinds,
    )


def parse_prometheus(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Samples of a Prometheus text exposition: ``{(name, sorted labels): value}``."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m:
            labels = tuple(sorted(_LABEL.findall(m.group("labels") or "")))
            key = (m.group("name"), labels)
            out[key] = out.get(key, 0.0) + float(m.group("value"))
    return out


def stage_quantiles(before: dict, after: dict, q: float = 0.5,
                    metric: str = "ray_rag_stage_latency_seconds") -> dict[str, float]:
    """Per-stage latency quantile (ms) between two scrapes, from histogram bucket deltas summed
    over replicas, interpolated linearly inside the bucket (as PromQL's histogram_quantile).

    Buckets, not ``_sum/_count``: Ray 2.60 rebuilds a histogram's ``_sum`` from bucket
    midpoints, so a mean from it is only as good as the bucket width.
    """
    cum: dict[str, dict[float, float]] = {}
    for (name, labels), value in after.items():
        lab = dict(labels)
        if name != f"{metric}_bucket" or "stage" not in lab or "le" not in lab:
            continue
        le = float(lab["le"])
        per = cum.setdefault(lab["stage"], {})
        per[le] = per.get(le, 0.0) + value - before.get((name, labels), 0.0)
    out = {}
    for stage, buckets in cum.items():
        value = _bucket_quantile(sorted(buckets.items()), q)
        if not math.isnan(value):
            out[stage] = 1000 * value
    return out


def _bucket_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Quantile of cumulative ``(upper bound, count)`` buckets; NaN when empty."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return math.nan
    rank, prev_le, prev_count = q * total, 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            width = count - prev_count
            return prev_le + (le - prev_le) * ((rank - prev_count) / width if width > 0 else 1.0)
        prev_le, prev_count = le, count
    return prev_le


def bottleneck(stages_ms: dict[str, float], calls_per_request: dict[str, float] | None = None) -> str:
    """The stage contributing most time per end-to-end request (its latency × calls per request)."""
    if not stages_ms:
        return ""
    weight = calls_per_request or {}
    return max(stages_ms, key=lambda s: stages_ms[s] * weight.get(s, 1.0))
