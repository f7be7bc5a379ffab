"""Run load steps against a ragserve URL and write the report (table, CSV, JSON, PNG)."""

from __future__ import annotations

import asyncio
import csv
import json
import math
import os
import tempfile
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import httpx

from deployments.bench import load
from deployments.bench.stats import StepResult, bottleneck, parse_prometheus, stage_quantiles, summarize

# A Ray dashboard keeps this file (a link into the newest session, under Ray's temp dir)
# current with every node's metrics port.
RAY_SERVICE_DISCOVERY = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray" / \
    "prom_metrics_service_discovery.json"


def sample_questions() -> list[str]:
    """The bundled sample questions (English and Chinese) used as the request mix."""
    f = resources.files("deployments") / "data" / "sample_questions.json"
    return [q["question"] for q in json.loads(f.read_text(encoding="utf-8"))]


def metrics_urls(sd: Path = RAY_SERVICE_DISCOVERY) -> list[str]:
    """Every Ray node's metrics endpoint.

    Asked from Ray (this process's connection, or the local cluster's via ``ray.init("auto")``);
    else read from the service-discovery file a Ray dashboard keeps (may be stale).
    """
    import ray

    if ray.is_initialized():
        return _node_metrics(ray.nodes())
    try:
        ray.init(address="auto", logging_level="ERROR")
    except (ConnectionError, RuntimeError):
        if not sd.exists():
            return []
        return [f"http://{t}/metrics" for group in json.loads(sd.read_text()) for t in group.get("targets", [])]
    try:
        return _node_metrics(ray.nodes())
    finally:
        ray.shutdown()


def _node_metrics(nodes: list[dict]) -> list[str]:
    return [f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics" for n in nodes if n.get("Alive")]


def scrape(urls: Sequence[str]) -> dict:
    """All samples of all nodes (summed by name and labels); empty when unreachable."""
    merged: dict = {}
    for u in urls:
        try:
            for k, v in parse_prometheus(httpx.get(u, timeout=10).text).items():
                merged[k] = merged.get(k, 0.0) + v
        except httpx.HTTPError:
            continue
    return merged


def run_steps(url: str, targets: Sequence[str], mode: str, loads: Sequence[float], duration_s: float,
              max_requests: int, max_tokens: int = 32, metrics: Sequence[str] = (),
              settle_s: float = 0.0, warmup: int = 2) -> list[StepResult]:
    """One step per (target, load); each bounded by ``duration_s`` and ``max_requests``.

    Args:
        settle_s: wait after a step before reading the metrics back (Ray exports replica
            metrics periodically, every few seconds): the per-stage breakdown needs it.
    """
    questions = sample_questions()
    results = []
    for target in targets:
        call = load.make_request(target, questions, max_tokens)
        for level in loads:
            results.append(asyncio.run(_step(url, target, mode, level, call, duration_s, max_requests,
                                             metrics, settle_s, warmup)))
            print(format_row(results[-1]), flush=True)
    return results


async def _step(url: str, target: str, mode: str, level: float, call: load.Request, duration_s: float,
                max_requests: int, metrics: Sequence[str], settle_s: float, warmup: int) -> StepResult:
    limits = httpx.Limits(max_connections=max(64, int(level) * 2))
    async with httpx.AsyncClient(base_url=url, timeout=180, limits=limits) as client:
        for i in range(warmup):
            await call(client, i)
        before = await asyncio.to_thread(scrape, metrics) if metrics else {}
        if mode == "closed":
            samples, elapsed = await load.closed_loop(call, client, int(level), duration_s, max_requests)
        else:
            samples, elapsed = await load.open_loop(call, client, level, duration_s, max_requests)
    result = summarize(target, mode, level, samples, elapsed)
    if metrics:
        await asyncio.sleep(settle_s)
        result.stages_ms = stage_quantiles(before, await asyncio.to_thread(scrape, metrics))
        result.bottleneck = bottleneck(result.stages_ms)
    return result


HEADER = (f"{'target':9} {'mode':6} {'load':>6} {'reqs':>5} {'err':>4} {'rps':>7} {'p50ms':>8} {'p95ms':>8} "
          f"{'p99ms':>8} {'ttft50':>7} {'tok/s':>7}  stages (p50 ms) -> bottleneck")


def format_row(r: StepResult) -> str:
    def f(x: float, w: int, d: int = 1) -> str:
        return f"{'-':>{w}}" if math.isnan(x) else f"{x:{w}.{d}f}"

    stages = " ".join(f"{k}={v:.1f}" for k, v in sorted(r.stages_ms.items()))
    return (f"{r.target:9} {r.mode:6} {r.load:6g} {r.requests:5d} {r.errors:4d} {f(r.throughput_rps, 7, 2)} "
            f"{f(r.p50_ms, 8)} {f(r.p95_ms, 8)} {f(r.p99_ms, 8)} {f(r.ttft_p50_ms, 7)} {f(r.tokens_per_s, 7)}"
            f"  {stages}{' -> ' + r.bottleneck if r.bottleneck else ''}")


def write_report(results: Sequence[StepResult], out_dir: Path, extra: dict | None = None) -> dict[str, Path]:
    """Write ``results.csv``, ``results.json`` and ``latency_vs_throughput.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [r.row() for r in results]
    paths = {"csv": out_dir / "results.csv", "json": out_dir / "results.json",
             "png": out_dir / "latency_vs_throughput.png"}
    base = [k for k in rows[0] if not k.startswith("stage_")]
    columns = base + sorted({k for row in rows for k in row if k.startswith("stage_")})
    with paths["csv"].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    payload = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "steps": rows, **(extra or {})}
    paths["json"].write_text(json.dumps(no_nan(payload), indent=2, allow_nan=False))
    plot(results, paths["png"])
    return paths


def no_nan(x: object) -> object:
    """NaN (no data, e.g. TTFT of a retrieval step) and infinity (no budget) as JSON null: neither is
    valid JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: no_nan(v) for k, v in x.items()}
    if isinstance(x, list):
        return [no_nan(v) for v in x]
    return x


def plot(results: Sequence[StepResult], path: Path) -> None:
    """p50 and p99 latency against achieved throughput, one line per (target, mode)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    series: dict[tuple[str, str], list[StepResult]] = {}
    for r in results:
        series.setdefault((r.target, r.mode), []).append(r)
    for (target, mode), rs in series.items():
        rs = sorted(rs, key=lambda r: r.load)
        x = [r.throughput_rps for r in rs]
        line, = ax.plot(x, [r.p50_ms for r in rs], marker="o", label=f"{target} ({mode}) p50")
        ax.plot(x, [r.p99_ms for r in rs], marker="x", linestyle="--", color=line.get_color(),
                label=f"{target} ({mode}) p99")
    ax.set_xlabel("throughput (successful requests/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("ragserve: latency vs throughput")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
