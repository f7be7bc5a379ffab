"""Every generated file of the repository, rendered from its one source: ``ragserve render``.

Three families of targets, each a function of the repository root returning ``{relative path: text}``:

* :mod:`~deployments.render.monitoring`: Prometheus config, recording and alert rules and the
  Grafana dashboard under ``cluster/monitoring/`` (from ``deployments/metrics.py`` and the stage
  registry);
* :mod:`~deployments.render.k8s`: the KubeRay manifests under ``k8s/`` (from
  ``cluster/serve_config.yaml`` and its overlays; worker groups sized by
  :mod:`~deployments.render.capacity`), the monitoring resources included;
* :mod:`~deployments.render.openapi`: ``docs/openapi.json``, the document the ingress serves.

Paths are relative to the root the caller names (``--root``, default the current directory), never
to where this package is installed: the files belong to a checkout, the code may live in a wheel.
:func:`render` is the one "write, or check for stale copies" loop.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from deployments.render import k8s, monitoring, openapi

#: Each target: repository root -> {path relative to it: text}.
TARGETS: tuple[Callable[[Path], dict[str, str]], ...] = (monitoring.generate, k8s.render_all, openapi.generate)
#: How many lines of a stale file's diff ``--check`` prints.
DIFF_LINES = 40


def render_all(root: Path) -> dict[str, str]:
    """Every generated file, keyed by its path relative to ``root`` (deterministic)."""
    out: dict[str, str] = {}
    for target in TARGETS:
        out.update(target(root))
    return out


def stale_files(outputs: dict[str, str], root: Path) -> list[str]:
    """The paths of ``outputs`` whose copy under ``root`` is missing or different."""
    return [rel for rel, text in outputs.items()
            if not (root / rel).is_file() or (root / rel).read_text(encoding="utf-8") != text]


def _diff(rel: str, old_path: Path, new: str) -> str:
    old = old_path.read_text(encoding="utf-8").splitlines() if old_path.is_file() else []
    lines = list(difflib.unified_diff(old, new.splitlines(), rel, "rendered", lineterm=""))
    return "\n".join(lines[:DIFF_LINES] + ([f"... ({len(lines) - DIFF_LINES} more diff lines)"]
                                           if len(lines) > DIFF_LINES else []))


def render(root: Path, check: bool = False, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Write every generated file under ``root``, or with ``check`` only compare.

    Returns:
        0 when written (or up to date); 1 when ``check`` found stale files, each named on ``err``
        with the start of its diff (``out``/``err`` default to the process's stdout/stderr).
    """
    out, err = out or sys.stdout, err or sys.stderr
    outputs = render_all(root)
    if check:
        stale = stale_files(outputs, root)
        for rel in stale:
            print(f"stale: {rel}\n{_diff(rel, root / rel, outputs[rel])}", file=err)
        if stale:
            print(f"{len(stale)} stale file(s); run `ragserve render` and commit", file=err)
            return 1
        print(f"up to date: {len(outputs)} generated files", file=out)
        return 0
    for rel, text in outputs.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
        print(f"wrote {rel}", file=out)
    return 0
