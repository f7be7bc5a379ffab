"""``ragserve soak``: a long mixed load (retrieve, queries streamed and not, streams abandoned by
their client, document writes) with the resident memory and open file descriptors of every process
of the app sampled every ``interval_s``; afterwards, whether anything leaks.

The procedure: a warm-up load (connections, caches and lazily loaded code settle), a short idle
pause and a *baseline* sample; the load for ``duration_s`` with a sample every ``interval_s``; the
load stops, in-flight requests finish, a short idle pause and a *final* sample. Then:

* **memory trend**: per process, the least-squares slope of RSS over the samples under load
  (the first :data:`TREND_SKIP` of them left out: caches and allocator pools still fill there), in
  MiB per hour, against the bound ``max(rss_mib_per_h, rss_fraction_per_h x its median RSS)``;
* **file descriptors**: per process, final minus baseline (both idle), against ``fd_bound``;
* **leaked streams**: the generator engines' unfinished sequences must be back at 0 after the load
  (streams that ended, failed or were abandoned all leave the engine).

Pure analysis functions (unit-tested); the run itself needs the stack's Ray driver (this process).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from deployments.reliability import procs
from deployments.reliability.mix import Load, Mix, Result

MIB = 1024 * 1024
#: Share of the samples under load (the first ones) left out of the RSS trend.
TREND_SKIP = 0.2


@dataclass(frozen=True)
class Bounds:
    """What counts as a leak.

    Attributes:
        rss_mib_per_h: a process's RSS may grow at most this fast (MiB/hour) under steady load...
        rss_fraction_per_h: ...or this fraction of its median RSS per hour, whichever is larger.
        fds: a process may hold at most this many more open fds when idle after the load than before.
    """

    rss_mib_per_h: float = 64.0
    rss_fraction_per_h: float = 0.05
    fds: int = 16


def slope_per_h(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of ``(seconds, value)`` points, per hour (0 for fewer than 2 times)."""
    if len({t for t, _ in points}) < 2:
        return 0.0
    mt = statistics.fmean(t for t, _ in points)
    mv = statistics.fmean(v for _, v in points)
    cov = sum((t - mt) * (v - mv) for t, v in points)
    var = sum((t - mt) ** 2 for t, _ in points)
    return cov / var * 3600.0


def trends(under_load: Sequence[procs.Sample], baseline: Sequence[procs.Sample], final: Sequence[procs.Sample],
           bounds: Bounds) -> list[dict[str, Any]]:
    """Per process (role and pid): RSS slope and fd growth with their verdicts, largest RSS first."""
    series: dict[tuple[str, int], list[procs.Sample]] = defaultdict(list)
    for s in under_load:
        series[(s.role, s.pid)].append(s)
    base = {(s.role, s.pid): s for s in baseline}
    end = {(s.role, s.pid): s for s in final}
    rows = []
    for (role, pid), ss in series.items():
        median_mib = statistics.median(s.rss for s in ss) / MIB
        slope = slope_per_h([(s.t, s.rss / MIB) for s in ss[int(len(ss) * TREND_SKIP):]])
        bound = max(bounds.rss_mib_per_h, bounds.rss_fraction_per_h * median_mib)
        fd_growth = end[(role, pid)].fds - base[(role, pid)].fds if (role, pid) in base and (role, pid) in end \
            else None
        rows.append({
            "role": role, "pid": pid, "samples": len(ss), "rss_median_mib": round(median_mib, 1),
            "rss_first_mib": round(ss[0].rss / MIB, 1), "rss_last_mib": round(ss[-1].rss / MIB, 1),
            "rss_slope_mib_per_h": round(slope, 1), "rss_bound_mib_per_h": round(bound, 1),
            "rss_ok": slope <= bound, "fds_baseline": base[(role, pid)].fds if (role, pid) in base else None,
            "fds_final": end[(role, pid)].fds if (role, pid) in end else None, "fd_growth": fd_growth,
            "fds_ok": fd_growth is None or fd_growth <= bounds.fds,
            "whole_run": (role, pid) in base and (role, pid) in end,
        })
    return sorted(rows, key=lambda r: -r["rss_median_mib"])


@dataclass
class SoakRun:
    """What one soak measured."""

    baseline: list[procs.Sample]
    under_load: list[procs.Sample]
    final: list[procs.Sample]
    results: list[Result]
    engine_sequences_after: float | None
    load_start: float


def run(url: str, mix: Mix, rate: float, questions: Sequence[str], duration_s: float, interval_s: float,
        warmup_s: float, engine_sequences: Callable[[], float], idle_s: float = 5.0, log=print) -> SoakRun:
    """The procedure of the module docstring against the stack whose Ray this process started."""
    warm = Load(url, mix, rate, questions, seed=1).start()
    time.sleep(warmup_s)
    warm.stop()
    time.sleep(idle_s)
    baseline = procs.sample(procs.app_processes())
    log(f"baseline: {len(baseline)} processes, {sum(s.rss for s in baseline) / MIB:.0f} MiB", flush=True)
    load = Load(url, mix, rate, questions, seed=2).start()
    start = time.monotonic()
    under_load: list[procs.Sample] = []
    for tick in range(math.ceil(duration_s / interval_s)):
        time.sleep(max(0.0, start + tick * interval_s - time.monotonic()))
        now = procs.sample(procs.app_processes())
        under_load += now
        if tick % max(1, round(300 / interval_s)) == 0:  # a progress line every 5 minutes
            log(f"{tick * interval_s / 60:.0f} min: {len(load.results)} requests done, {len(now)} processes, "
                f"{sum(s.rss for s in now) / MIB:.0f} MiB in all", flush=True)
    time.sleep(max(0.0, start + duration_s - time.monotonic()))
    results = load.stop()
    time.sleep(idle_s * 2)
    final = procs.sample(procs.app_processes())
    sequences = _settled(engine_sequences, within_s=30.0)
    return SoakRun(baseline, under_load, final, results, sequences, start)


def _settled(read: Callable[[], float], within_s: float) -> float | None:
    """``read()`` polled until it is 0 or ``within_s`` passed; its last value (None: unreadable)."""
    deadline = time.monotonic() + within_s
    value = None
    while time.monotonic() < deadline:
        try:
            value = read()
        except Exception:  # noqa: BLE001 - a replica being replaced: read again
            value = None
        if value == 0:
            return value
        time.sleep(1.0)
    return value


def report(r: SoakRun, bounds: Bounds, extra: dict[str, Any]) -> dict[str, Any]:
    """The JSON report: per-process trends, request totals, leaks, the verdict and ``extra``."""
    rows = trends(r.under_load, r.baseline, r.final, bounds)
    by_kind: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for res in r.results:
        by_kind[res.kind]["ok" if res.ok else res.failure] += 1
    violations = [f"{x['role']} [{x['pid']}]: RSS +{x['rss_slope_mib_per_h']} MiB/h > {x['rss_bound_mib_per_h']}"
                  for x in rows if not x["rss_ok"]]
    violations += [f"{x['role']} [{x['pid']}]: +{x['fd_growth']} fds > {bounds.fds}" for x in rows if not x["fds_ok"]]
    if r.engine_sequences_after != 0:
        violations.append(f"engine sequences after the load: {r.engine_sequences_after} (leaked streams)")
    return {"bounds": asdict(bounds), "processes": rows, "requests": {k: dict(v) for k, v in by_kind.items()},
            "engine_sequences_after_load": r.engine_sequences_after, "violations": violations,
            "samples": [asdict(s) | {"t": round(s.t - r.load_start, 1)} for s in r.under_load], **extra}


def markdown(rep: dict[str, Any]) -> str:
    """The per-process table (roles with several processes show each)."""
    lines = ["| process | RSS median | RSS first → last | RSS slope (bound) | fds before → after (idle) |",
             "|---|---|---|---|---|"]
    for x in rep["processes"]:
        fds = f"{x['fds_baseline']} → {x['fds_final']}" if x["whole_run"] else "not there the whole run"
        lines.append(f"| {x['role']} | {x['rss_median_mib']:.0f} MiB | {x['rss_first_mib']:.0f} → "
                     f"{x['rss_last_mib']:.0f} MiB | {x['rss_slope_mib_per_h']:+.1f} MiB/h ({x['rss_bound_mib_per_h']:.0f})"
                     f"{'' if x['rss_ok'] else ' **over**'} | {fds}{'' if x['fds_ok'] else ' **over**'} |")
    return "\n".join(lines)


def plot(rep: dict[str, Any], path: Path, min_mib: float = 20.0) -> None:
    """RSS over time, one line per process of at least ``min_mib`` (small, for the docs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[tuple[str, int], list[tuple[float, float]]] = defaultdict(list)
    for s in rep["samples"]:
        series[(s["role"], s["pid"])].append((s["t"] / 60, s["rss"] / MIB))
    fig, ax = plt.subplots(figsize=(9, 4.8))
    for (role, pid), pts in sorted(series.items(), key=lambda kv: -max(v for _, v in kv[1])):
        if max(v for _, v in pts) >= min_mib:
            ax.plot([t for t, _ in pts], [v for _, v in pts], linewidth=1, label=f"{role} [{pid}]")
    ax.set_xlabel("minutes under load")
    ax.set_ylabel("RSS (MiB)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_title("ragserve soak: resident memory per process")
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def write(out: Path, rep: dict[str, Any]) -> list[Path]:
    """``soak.json``, ``soak.md`` and ``soak_rss.png`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "soak.json", out / "soak.md", out / "soak_rss.png"]
    paths[0].write_text(json.dumps(rep, indent=2))
    paths[1].write_text(markdown(rep) + "\n")
    plot(rep, paths[2])
    return paths
