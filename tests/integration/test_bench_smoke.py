"""Load smoke test: a few seconds per target through the real app; no errors, reports written."""

from __future__ import annotations

import csv
import json

import pytest

from deployments.bench import load, runner

pytestmark = pytest.mark.integration


def test_bench_every_target_and_reports(stack, tmp_path) -> None:
    metrics = runner.metrics_urls()
    assert metrics, "Ray reports no metrics endpoint"
    results = runner.run_steps(stack.url, ["retrieve", "retrieve_cached", "embed", "generate", "generate_collected"],
                               "closed", [1, 2], duration_s=2, max_requests=8, max_tokens=8)
    results += runner.run_steps(stack.url, ["retrieve"], "open", [4], duration_s=2, max_requests=8)
    # One step reads the per-stage breakdown back from Ray's metrics (exported every few seconds).
    results += runner.run_steps(stack.url, ["query"], "closed", [2], duration_s=3, max_requests=6, max_tokens=8,
                                metrics=metrics, settle_s=12)
    assert {r.target for r in results} == set(load.TARGETS)
    for r in results:
        assert r.requests > 0 and r.errors == 0, r
        assert r.p50_ms > 0 and r.throughput_rps > 0
    gen = [r for r in results if r.target in ("generate", "query")]
    assert all(r.ttft_p50_ms > 0 and r.tokens_per_s > 0 for r in gen)
    # Not streamed: no time to first token, the tokens counted from the response's usage.
    assert all(r.tokens_per_s > 0 for r in results if r.target == "generate_collected")
    query = results[-1]
    assert set(query.stages_ms) >= {"preprocess", "encoder", "search", "generator"}, query.stages_ms
    assert query.bottleneck == "generator"  # 8 tokens of generation outweigh a ~10 ms retrieval

    paths = runner.write_report(results, tmp_path / "bench")
    rows = list(csv.DictReader(paths["csv"].open()))
    assert len(rows) == len(results) and "stage_generator_ms" in rows[0]
    steps = json.loads(paths["json"].read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))["steps"]
    assert len(steps) == len(results) and steps[0]["ttft_p50_ms"] is None  # retrieval has no TTFT
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
