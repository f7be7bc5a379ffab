"""Where bulk ingestion reads from (deployments/ingest/sources.py) and when it fails loudly
(deployments/ingest/bulk.py: parse_ref, outcome): shared paths and storage URIs list the same
files under the same source names, a file the parsing node cannot read is reported, and a run that
found nothing or skipped everything exits 1."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployments.cli import main
from deployments.config import AppConfig, IngestConfig
from deployments.errors import ConfigError
from deployments.ingest import bulk, sources
from deployments.ingest.pipeline import FileReport

CFG = AppConfig(ingest=IngestConfig(max_file_bytes=1000))


@pytest.fixture(autouse=True)
def _cli_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ragserve``'s main() sets HF_HUB_OFFLINE for its process: keep it out of the other tests."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _corpus(root: Path) -> Path:
    docs = root / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.md").write_text("# Alpha\n\nThe alpha pump runs at 3 bar.\n")
    (docs / "sub" / "b.txt").write_text("Beta valves close at dusk.\n")
    (docs / "big.txt").write_text("x" * 2000)
    return docs


def test_a_path_and_its_file_uri_list_the_same_files(tmp_path: Path) -> None:
    docs = _corpus(tmp_path)
    local = sources.list_files([docs])
    remote = sources.list_files([docs.as_uri()])  # through pyarrow.fs, as s3:// or gs:// would be
    assert [(r.source, r.size) for r in local] == [(r.source, r.size) for r in remote]
    assert {r.source for r in local} == {"docs/a.md", "docs/big.txt", "docs/sub/b.txt"}
    assert all(r.uri.startswith("file:///") for r in remote) and all(r.mtime > 0 for r in remote)
    assert [sources.read(r) for r in local] == [sources.read(r) for r in remote]
    assert [r.source for r in sources.list_files([(docs / "a.md").as_uri()])] == ["a.md"]


def test_parse_ref_reads_where_it_runs_and_reports_what_it_cannot(tmp_path: Path) -> None:
    docs = _corpus(tmp_path)
    by_source = {r.source: r for r in sources.list_files([docs.as_uri()])}
    parsed, bad = bulk.parse_ref(by_source["docs/a.md"], CFG)
    assert [d.title for d in parsed] == ["Alpha"] and not bad
    assert "the limit is 1000" in bulk.parse_ref(by_source["docs/big.txt"], CFG)[1][0].reason
    # Listed on the driver, absent on the node that parses it (a path only the head pod has).
    gone = sources.FileRef(str(tmp_path / "head-only" / "c.md"), "head-only/c.md", 10, 1)
    parsed, bad = bulk.parse_ref(gone, CFG)
    assert not parsed and bad[0].status == "skipped" and "No such file" in bad[0].reason
    # Over the limit by its listed size: skipped before it is read (the file need not exist).
    huge = sources.FileRef(str(tmp_path / "nowhere.md"), "nowhere.md", 10**9, 1)
    assert "the limit is 1000" in bulk.parse_ref(huge, CFG)[1][0].reason


@pytest.mark.parametrize("path,message", [("local:///data/docs", "driver's node only"),
                                          ("/no/such/dir", "no such file or directory")])
def test_paths_no_worker_can_read_are_refused_before_anything_starts(path: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        sources.list_files([path])


def test_the_cli_fails_on_them_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ingest", "local:///data/docs"]) == 2
    assert "local://" in capsys.readouterr().err


def _r(status: str, reason: str = "") -> FileReport:
    return FileReport("docs/x.md", status, reason=reason)  # type: ignore[arg-type]


def test_outcome_fails_when_nothing_went_in() -> None:
    assert bulk.outcome([_r("added"), _r("skipped", "empty file")]) == (0, "1 added, 0 updated, 0 unchanged, 1 skipped")
    assert bulk.outcome([_r("unchanged")])[0] == 0
    assert bulk.outcome([]) == (1, "no files found")
    status, line = bulk.outcome([_r("skipped", "empty file"), _r("skipped", "unsupported file type .pptx")])
    assert status == 1 and line.startswith("every file was skipped") and "shared volume" not in line
    status, line = bulk.outcome([_r("skipped", "[Errno 2] No such file or directory: 'docs/x.md'")])
    assert status == 1 and "/data/ingest" in line and "s3://" in line
