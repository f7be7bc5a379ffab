"""Helpers of ``ragserve bench --mode ingest`` (deployments/bench/ingest.py): the generated corpus,
the config that finds no server, and the summary line read back."""

from __future__ import annotations

from pathlib import Path

import yaml

from deployments.bench.ingest import elsewhere, format_row, parse_summary, write_corpus
from deployments.config import IngestConfig
from deployments.ingest import sources
from deployments.ingest.route import estimate

ROOT = Path(__file__).resolve().parents[3]


def test_the_corpus_is_n_distinct_small_documents(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "c", 30)
    files = sorted(corpus.iterdir())
    texts = {f.read_text() for f in files}
    assert len(files) == len(texts) == 30
    assert all(t.startswith("# Unit ") and len(t) < 600 for t in texts)  # one chunk each (200 tokens)
    assert estimate(sources.list_files([corpus]), IngestConfig()).documents == 30


def test_elsewhere_moves_only_the_http_port(tmp_path: Path) -> None:
    shipped = ROOT / "cluster" / "serve_config.yaml"
    moved = yaml.safe_load(elsewhere(shipped, tmp_path / "x.yaml").read_text())
    original = yaml.safe_load(shipped.read_text())
    assert moved["http_options"]["port"] != original["http_options"]["port"]
    assert moved["http_options"]["host"] == original["http_options"]["host"]
    assert moved["applications"] == original["applications"]


def test_summary_line_is_read_back() -> None:
    out = "ingest: ...\n24 added, 1 updated, 2 unchanged, 3 skipped; 31 chunks in 'kb' (4.2s)\n"
    assert parse_summary(out) == {"added": 24, "updated": 1, "unchanged": 2, "skipped": 3, "chunks": 31}
    assert parse_summary("24 added, 0 updated, 0 unchanged, 0 skipped; ? chunks in 'kb'")["chunks"] is None
    assert parse_summary("Traceback ...") == {}
    row = {"documents": 24, "way": "api", "seconds": 4.0, "exit": 0, "route": ["x"], "added": 24, "chunks": 24}
    assert format_row(row).split()[:6] == ["24", "api", "4.0", "6.0", "24", "24"]
