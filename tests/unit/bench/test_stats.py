"""Report maths of ``ragserve bench``: percentiles, step summaries, metrics deltas, bottleneck."""

from __future__ import annotations

import math

import pytest

from deployments.bench.stats import Sample, bottleneck, parse_prometheus, percentile, stage_quantiles, summarize


@pytest.mark.parametrize(("xs", "p", "want"), [
    ([1, 2, 3, 4], 50, 2.5), ([1, 2, 3, 4], 0, 1), ([1, 2, 3, 4], 100, 4), ([5], 99, 5),
    ([10, 0, 20], 50, 10), (list(range(101)), 95, 95), ([1, 2], 75, 1.75),
])
def test_percentile_interpolates(xs, p, want) -> None:
    assert percentile(xs, p) == pytest.approx(want)


def test_percentile_of_nothing_is_nan() -> None:
    assert math.isnan(percentile([], 50))


def test_summarize_counts_errors_and_excludes_them_from_latency() -> None:
    samples = [Sample(0, 0.1, True, ttft=0.02, output_tokens=10), Sample(0, 0.3, True, ttft=0.04, output_tokens=30),
               Sample(0, 9.0, False, error="503"), Sample(0, 8.0, False, error="503"),
               Sample(0, 7.0, False, error="ReadTimeout")]
    r = summarize("query", "closed", 4, samples, duration_s=2.0)
    assert (r.requests, r.errors) == (5, 3)
    assert r.throughput_rps == pytest.approx(1.0)
    assert r.p50_ms == pytest.approx(200) and r.p99_ms == pytest.approx(298)
    assert r.ttft_p50_ms == pytest.approx(30)
    assert r.tokens_per_s == pytest.approx(20)
    assert r.error_kinds == {"503": 2, "ReadTimeout": 1}
    row = r.row()
    assert row["error_kinds"] == "503=2;ReadTimeout=1" and "stages_ms" not in row


def test_summarize_without_tokens_has_nan_generation_fields() -> None:
    r = summarize("retrieve", "open", 8, [Sample(0, 0.05, True)], 1.0)
    assert math.isnan(r.ttft_p50_ms) and math.isnan(r.tokens_per_s)


EXPOSITION = """# HELP ray_rag_stage_latency_seconds Service time
# TYPE ray_rag_stage_latency_seconds histogram
ray_rag_stage_latency_seconds_sum{stage="encoder",replica="a"} 1.0
ray_rag_stage_latency_seconds_count{stage="encoder",replica="a"} 100
ray_rag_stage_latency_seconds_sum{stage="encoder",replica="b"} 0.5
ray_rag_stage_latency_seconds_count{stage="encoder",replica="b"} 50
ray_rag_stage_latency_seconds_sum{stage="search",replica="a"} 0.3
ray_rag_stage_latency_seconds_count{stage="search",replica="a"} 100
ray_rag_stage_latency_seconds_bucket{stage="search",replica="a",le="+Inf"} 100
ray_other_total{x="1"} 3e2
"""


def test_parse_prometheus_reads_labels_and_values() -> None:
    m = parse_prometheus(EXPOSITION)
    assert m[("ray_rag_stage_latency_seconds_count", (("replica", "b"), ("stage", "encoder")))] == 50
    assert m[("ray_other_total", (("x", "1"),))] == 300
    assert not any(name.startswith("#") for name, _ in m)


def _buckets(stage: str, replica: str, counts: dict[str, float]) -> str:
    return "".join(f'ray_rag_stage_latency_seconds_bucket{{stage="{stage}",replica="{replica}",le="{le}"}} {c}\n'
                   for le, c in counts.items())


def test_stage_quantiles_use_bucket_deltas_summed_over_replicas() -> None:
    before = parse_prometheus(_buckets("encoder", "a", {"0.01": 10, "0.02": 10, "+Inf": 10}))
    after = parse_prometheus(
        _buckets("encoder", "a", {"0.01": 10, "0.02": 30, "+Inf": 30})      # +20 calls in (10, 20] ms
        + _buckets("encoder", "b", {"0.01": 20, "0.02": 20, "+Inf": 20})    # +20 calls in (0, 10] ms
        + _buckets("search", "a", {"0.005": 0, "0.0075": 4, "+Inf": 4}))
    q = stage_quantiles(before, after, 0.5)
    # 40 new encoder calls: 20 at or under 10 ms, 20 in (10, 20]: the median is the 10 ms edge.
    assert q["encoder"] == pytest.approx(10.0)
    assert stage_quantiles(before, after, 0.75)["encoder"] == pytest.approx(15.0)
    assert q["search"] == pytest.approx(6.25)  # interpolated half-way through (5, 7.5] ms


def test_stage_quantiles_ignore_stages_without_new_calls_and_the_inf_bucket() -> None:
    same = parse_prometheus(_buckets("search", "a", {"0.01": 5, "+Inf": 5}))
    assert stage_quantiles(same, same) == {}
    only_inf = parse_prometheus(_buckets("generator", "a", {"60": 0, "120": 1, "+Inf": 3}))
    assert stage_quantiles({}, only_inf, 0.99)["generator"] == pytest.approx(120_000)


def test_bottleneck_weights_calls_per_request() -> None:
    stages = {"preprocess": 0.2, "encoder": 12.0, "search": 6.0, "generator": 900.0}
    assert bottleneck(stages) == "generator"
    assert bottleneck({"encoder": 12.0, "search": 6.0}, {"search": 3}) == "search"
    assert bottleneck({}) == ""
