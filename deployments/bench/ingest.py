"""``ragserve bench --mode ingest``: ``ragserve ingest`` next to a running server, each way.

For each size (default 24 and 2,000 documents) a corpus of that many small Markdown files is
generated in a temporary directory (one chunk each, deleted afterwards), then ingested by
``ragserve ingest`` in a new process, as a user runs it, once per way:

* ``api``: ``--via api``, posted through the server's ``POST /v1/documents``;
* ``cluster``: ``--via cluster``, the bulk pipeline on the server's Ray cluster, in the CPUs its
  replicas leave free;
* ``own-ray``: the config with its ``http_options`` port moved to a free one, so no server is
  found and ingest starts a Ray of its own next to the server's, as every ingest did before it
  looked for a server.

Each run writes a fresh collection (dropped afterwards) and is timed from the process's start to
its exit, imports included; the ways run back to back on the same machine in one command.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

from deployments.config import DEFAULT_CONFIG_PATH, load_serve_yaml

WAYS = ("api", "cluster", "own-ray")
#: Nouns for the generated prose: distinct documents, one chunk each (~70 encoder tokens).
WORDS = ("pump valve seal gasket rotor bearing impeller housing flange coupling motor shaft sensor "
         "relay filter nozzle manifold bracket spring washer").split()
_SUMMARY = re.compile(r"(\d+) added, (\d+) updated, (\d+) unchanged, (\d+) skipped; (\S+) chunks")


def write_corpus(directory: Path, n: int) -> Path:
    """``n`` small Markdown documents in ``directory`` (a title and three sentences each)."""
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        words = [WORDS[(i * k + k) % len(WORDS)] for k in range(1, 7)]
        body = " ".join(f"The {w} of unit {i}-{j} is checked every {3 + (i + j) % 9} days and logged as "
                        f"record {i * 10 + j}." for j, w in enumerate(words[:3]))
        (directory / f"doc{i:05d}.md").write_text(f"# Unit {i} {words[3]} notes\n\n{body}\n", encoding="utf-8")
    return directory


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def elsewhere(config: Path, out: Path) -> Path:
    """A copy of the serve config whose ``http_options`` port nothing listens on: ingest finds no
    server there (the way every ingest went before it looked for one)."""
    data = load_serve_yaml(config)
    data["http_options"] = {**(data.get("http_options") or {}), "port": _free_port()}
    out.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return out


def parse_summary(text: str) -> dict[str, int | None]:
    """The counts of ``ragserve ingest``'s last line (``N added, ...; M chunks in ...``)."""
    m = _SUMMARY.search(text)
    if not m:
        return {}
    added, updated, unchanged, skipped, chunks = m.groups()
    return {"added": int(added), "updated": int(updated), "unchanged": int(unchanged), "skipped": int(skipped),
            "chunks": int(chunks) if chunks.isdigit() else None}


def ingest_once(config: Path, way: str, corpus: Path, collection: str, timeout_s: float) -> dict[str, Any]:
    """One ``ragserve ingest`` of ``corpus`` into ``collection``; wall time and what it reported."""
    flags = {"api": ["--via", "api"], "cluster": ["--via", "cluster"], "own-ray": []}[way]
    cmd = [sys.executable, "-m", "deployments.cli", "--config", str(config), "ingest", "-q",
           "--collection", collection, *flags, str(corpus)]
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    wall = time.perf_counter() - start
    routes = [line[len("ingest: "):] for line in res.stderr.splitlines() if line.startswith("ingest: ")]
    out = {"way": way, "seconds": round(wall, 2), "exit": res.returncode, "route": routes,
           **parse_summary(res.stdout + res.stderr)}
    if res.returncode:
        out["tail"] = (res.stdout + res.stderr)[-2000:]
    return out


def run(url: str, config: Path | None, sizes: Sequence[int], ways: Sequence[str],
        timeout_s: float = 1800) -> list[dict[str, Any]]:
    """Every way at every size, back to back; each collection dropped after its run."""
    config = Path(config or DEFAULT_CONFIG_PATH)
    rows, run_id = [], f"{int(time.time())}"
    with tempfile.TemporaryDirectory(prefix="ragserve-ingest-bench-") as tmp, httpx.Client(base_url=url) as client:
        moved = elsewhere(config, Path(tmp) / "serve_config.elsewhere.yaml")
        for n in sizes:
            corpus = write_corpus(Path(tmp) / f"corpus{n}", n)
            for way in ways:
                # A name of this run only: a collection an interrupted run left behind would hold
                # these very documents, and they would be found unchanged rather than written.
                collection = f"bench_ingest_{way.replace('-', '_')}_{n}_{run_id}"
                row = {"documents": n, **ingest_once(moved if way == "own-ray" else config, way, corpus,
                                                     collection, timeout_s)}
                dropped = client.delete(f"/v1/collections/{collection}", timeout=60)
                if dropped.status_code != 200:
                    print(f"warning: {collection} not dropped ({dropped.status_code}: {dropped.text[:200]})",
                          file=sys.stderr)
                rows.append(row)
                print(format_row(row), flush=True)
    return rows


HEADER = f"{'docs':>6} {'way':8} {'seconds':>8} {'docs/s':>7} {'added':>6} {'chunks':>6} {'exit':>4}  route"


def format_row(row: dict[str, Any]) -> str:
    """One line of the table."""
    rate = row["documents"] / row["seconds"] if row["seconds"] else float("nan")
    return (f"{row['documents']:6d} {row['way']:8} {row['seconds']:8.1f} {rate:7.1f} {row.get('added', '-')!s:>6} "
            f"{row.get('chunks', '-')!s:>6} {row['exit']:4d}  {' / '.join(row['route'])}")
