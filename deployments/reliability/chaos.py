"""``ragserve chaos``: the chaos matrix. A steady open-loop load runs (retrieval, queries streamed
and not) at a fraction of the measured capacity while the faults of ``deployments/reliability/
faults.py`` happen one at a time; each fault's window is summarised from what the clients saw.

Per fault: requests, failures by status (or in-band error, or the client's error when no response
came), failures not in the one error shape, hung requests (no answer within the client deadline),
streams that ended without their final event (``stream_cut``) or with an in-band error, how long
after the kill each kind of request succeeded again and the last failure ended, when the app was
whole again, and the slowest request. A fault's window runs from ``pre_s`` before its kill until
``settle_s`` after the app is whole again; a request belongs to the window it started in.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from deployments.reliability.faults import Fault, Injector, Killed
from deployments.reliability.mix import Load, Result


@dataclass
class Window:
    """The time span of one fault: start, kill, whole again (None: not within the timeout), end."""

    fault: Fault
    start: float
    killed: Killed | None
    whole_at: float | None
    end: float
    error: str = ""  # the fault could not be injected


@dataclass
class Timing:
    """How long the drill waits around each fault."""

    pre_s: float = 5.0
    settle_s: float = 10.0
    recovery_timeout_s: float = 240.0


def run_faults(injector: Injector, load: Load, faults: Sequence[Fault], timing: Timing,
               log=print) -> list[Window]:
    """Inject ``faults`` one at a time while ``load`` runs; each waits for the app to be whole
    (the previous fault's recovery included) before it starts."""
    windows = []
    for fault in faults:
        start = time.monotonic()
        time.sleep(timing.pre_s)
        try:
            killed = injector.kill(fault)
        except RuntimeError as e:
            log(f"{fault.name}: not injected: {e}")
            windows.append(Window(fault, start, None, None, time.monotonic(), error=str(e)))
            continue
        log(f"{fault.name}: killed {killed.what}")
        whole = injector.wait_whole(fault, killed, timing.recovery_timeout_s)
        log(f"{fault.name}: " + (f"whole again after {whole - killed.at:.1f}s" if whole else
                                 f"NOT whole within {timing.recovery_timeout_s:g}s"))
        time.sleep(timing.settle_s)
        if whole is not None:
            settle_until_every_kind_ok(load, killed.at, time.monotonic() + timing.recovery_timeout_s)
        windows.append(Window(fault, start, killed, whole, time.monotonic()))
    return windows


def settle_until_every_kind_ok(load: Load, kill: float, deadline: float, poll_s: float = 1.0) -> bool:
    """Keep the window open until every kind the load sends has succeeded since ``kill`` (or
    ``deadline``): at a low offered rate a few seconds of settling may hold no request of a rare
    kind, which would read as that kind never recovering. Returns whether every kind did."""
    kinds = {k for k, w in load.mix.weights.items() if w > 0}
    while True:
        ok = {r.kind for r in list(load.results) if r.ok and r.start >= kill}
        if kinds <= ok or time.monotonic() >= deadline:
            return kinds <= ok
        time.sleep(poll_s)


def _since(t: float | None, kill: float) -> float | None:
    return None if t is None else round(t - kill, 1)


def summarize(window: Window, results: Sequence[Result]) -> dict[str, Any]:
    """One fault's row (pure: unit-tested on hand-made results)."""
    rs = [r for r in results if window.start <= r.start < window.end]
    failed = [r for r in rs if not r.ok]
    kill = window.killed.at if window.killed else window.start
    after = [r for r in rs if r.start >= kill]
    kinds = sorted({r.kind for r in rs})
    first_ok = {k: min((r.end for r in after if r.kind == k and r.ok), default=None) for k in kinds}
    slowest = max(rs, key=lambda r: r.latency, default=None)
    return {
        "fault": window.fault.name, "killed": window.killed.what if window.killed else None,
        "error": window.error or None, "requests": len(rs), "failed": len(failed),
        "failed_by": dict(sorted(Counter(r.failure for r in failed).items())),
        "failed_by_kind": dict(sorted(Counter(r.kind for r in failed).items())),
        "examples": {f: next(r.detail for r in failed if r.failure == f) for f in sorted({r.failure for r in failed})},
        "not_in_error_shape": sum(1 for r in failed if r.status not in (0, 200) and not r.shaped),
        "no_response": sum(1 for r in failed if r.status == 0 and r.error != "hung"),
        "hung": sum(1 for r in rs if r.error == "hung"),
        "streams": sum(1 for r in rs if r.kind == "stream"),
        "streams_cut": sum(1 for r in rs if r.error == "stream_cut"),
        "streams_in_band_error": sum(1 for r in rs if r.error.startswith("stream_error")),
        "rejected_with_retry_after": sum(1 for r in failed if r.status in (429, 503) and r.retry_after),
        "first_success_after_kill_s": {k: _since(t, kill) for k, t in first_ok.items()},
        "recovered_s": _recovered(failed, first_ok, kill),
        "last_failure_after_kill_s": _since(max((r.end for r in failed), default=None), kill),
        "whole_again_s": _since(window.whole_at, kill) if window.killed else None,
        "slowest_s": round(slowest.latency, 2) if slowest else None,
        "slowest_kind": slowest.kind if slowest else None,
    }


def _recovered(failed: Sequence[Result], first_ok: dict[str, float | None], kill: float) -> float | str | None:
    """When every kind of request that failed succeeded again (its first success started after
    the kill), in seconds after the kill; None when nothing failed, "never" when one did not."""
    kinds = {r.kind for r in failed}
    if not kinds:
        return None
    if any(first_ok.get(k) is None for k in kinds):
        return "never"
    return round(max(first_ok[k] for k in kinds) - kill, 1)  # type: ignore[type-var]


def verdict(row: dict[str, Any], fault: Fault) -> list[str]:
    """What must hold after a fault, on any machine: it was injected and the app became whole
    again, and nothing hung. Unless the fault killed a process holding client connections (the
    proxy, an ingress replica, a node with one; what they held is lost with them, before the app
    can answer): no stream ended without its final event, every request got a response, and every
    error response was in the one shape. Returns the violations (empty: the fault passed)."""
    bad = []
    if row["error"]:
        bad.append(f"not injected: {row['error']}")
    elif row["whole_again_s"] is None:
        bad.append("not whole again")
    if row["hung"]:
        bad.append(f"{row['hung']} hung")
    if fault.holds_connections:
        return bad
    if row["streams_cut"]:
        bad.append(f"{row['streams_cut']} streams cut")
    if row["no_response"]:
        bad.append(f"{row['no_response']} without a response")
    if row["not_in_error_shape"]:
        bad.append(f"{row['not_in_error_shape']} errors not in the one shape")
    return bad


COLUMNS = ("fault", "requests", "failed (by status)", "not in the one shape", "no response", "hung",
           "streams: cut / in-band error", "failing kinds ok again", "last failure", "whole again", "slowest")


def _s(x: float | str | None) -> str:
    if isinstance(x, str):
        return x
    return "-" if x is None or math.isnan(x) else f"{x:g} s"


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The matrix as a Markdown table (times are seconds after the kill)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        failed = f"{r['failed']}" + (" (" + ", ".join(f"{k}: {v}" for k, v in r["failed_by"].items()) + ")"
                                     if r["failed_by"] else "")
        cells = [r["fault"], str(r["requests"]), failed, str(r["not_in_error_shape"]), str(r["no_response"]),
                 str(r["hung"]), f"{r['streams_cut']} / {r['streams_in_band_error']} of {r['streams']}",
                 _s(r["recovered_s"]), _s(r["last_failure_after_kill_s"]), _s(r["whole_again_s"]),
                 _s(r["slowest_s"]) + (f" ({r['slowest_kind']})" if r["slowest_kind"] else "")]
        if r["error"]:
            cells[2] = f"not injected: {r['error']}"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(windows: Sequence[Window], results: Sequence[Result], extra: dict[str, Any]) -> dict[str, Any]:
    """The JSON report: every fault's row and verdict, the whole load's totals, and ``extra``."""
    rows = [summarize(w, results) for w in windows]
    for row, w in zip(rows, windows, strict=True):
        row["violations"] = verdict(row, w.fault)
    return {"faults": rows, "total_requests": len(results),
            "windows": [{"fault": w.fault.name, **{k: v for k, v in asdict(w).items() if k != "fault"}}
                        for w in windows], **extra}


def write(out: Any, rep: dict[str, Any]) -> list[Any]:
    """``chaos.json`` and ``chaos.md`` under ``out``; returns the paths."""
    from deployments.bench.runner import no_nan

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "chaos.json", out / "chaos.md"]
    paths[0].write_text(json.dumps(no_nan(rep), indent=2, allow_nan=False))
    paths[1].write_text(markdown(rep["faults"]) + "\n")
    return paths
