"""``ragserve ingest`` next to the running stack: it posts a small batch through the API, or joins
the stack's own Ray cluster with the bulk pipeline, and never starts a second Ray; the documents
are searchable, and both ways write the same document versions.

The CLI runs as users run it, in a subprocess, with a config whose ``http_options`` name the
stack's port; every process it starts is watched for a Ray node of its own (``gcs_server``,
``raylet``).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import psutil
import pytest
import yaml

from deployments.bench.ingest import write_corpus

ROOT = Path(__file__).resolve().parents[2]
RAY_NODE = {"gcs_server", "raylet"}
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def next_to_stack(stack, tmp_path_factory) -> Path:
    """The shipped config pointing at the stack: its HTTP port, its Milvus, collection it_next."""
    data = yaml.safe_load((ROOT / "cluster" / "serve_config.yaml").read_text())
    data["http_options"]["port"] = urlparse(stack.url).port
    data["applications"][0]["args"]["search"]["milvus"].update(uri=stack.milvus.uri, collection="it_next",
                                                               timeout_s=10)
    path = tmp_path_factory.mktemp("nextcfg") / "serve_config.yaml"
    path.write_text(yaml.safe_dump(data))
    yield path
    stack.client.delete("/v1/collections/it_next")


def _ingest(config: Path, corpus: Path, *flags: str, timeout_s: float = 300) -> tuple[int, str, set[str]]:
    """Run ``ragserve ingest``; its exit status, output, and the names of every process it started
    (polled until it exits)."""
    cmd = [sys.executable, "-m", "deployments.cli", "--config", str(config), "ingest", "-q", *flags, str(corpus)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    me = psutil.Process(proc.pid)
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            seen |= {c.name() for c in me.children(recursive=True)}
        except psutil.Error:
            pass
        time.sleep(0.1)
    out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    return proc.returncode, out, seen


def _found(stack, doc: Path) -> bool:
    """Whether searching for a document's own text finds it first (by its title)."""
    title, body = doc.read_text().split("\n", 1)
    r = stack.client.post("/v1/retrieve", json={"question": body.strip(), "collection": "it_next", "top_k": 1})
    assert r.status_code == 200, r.text
    return r.json()["sources"][0]["title"] == title.removeprefix("# ")


def test_a_small_batch_goes_through_the_api_without_a_ray(stack, next_to_stack: Path, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "small", 24)
    code, out, started = _ingest(next_to_stack, corpus)
    assert code == 0, out
    assert "24 documents <= ingest.api_max_documents" in out and "POST /v1/documents" in out, out
    assert "24 added, 0 updated, 0 unchanged, 0 skipped" in out, out
    assert not started & RAY_NODE, started
    assert _found(stack, corpus / "doc00007.md") and _found(stack, corpus / "doc00023.md")


def test_the_pipeline_joins_the_stacks_ray_and_writes_what_the_api_would(stack, next_to_stack: Path,
                                                                         tmp_path: Path) -> None:
    import ray

    corpus = write_corpus(tmp_path / "other", 24)
    for f in corpus.iterdir():  # other documents than the API test's, so they are added here
        f.write_text(f.read_text().replace("Unit", "Cell").replace("unit", "cell"))
    code, out, started = _ingest(next_to_stack, corpus, "--via", "cluster")
    assert code == 0, out
    gcs = ray.get_runtime_context().gcs_address  # the stack's own cluster (this process is its driver)
    assert f"the bulk pipeline on the Ray cluster at {gcs} serving {stack.url}" in out, out
    assert "CPUs free beside the app" in out, out  # it fitted itself into what the replicas left
    assert "24 added, 0 updated, 0 unchanged, 0 skipped" in out, out
    assert not started & RAY_NODE, started
    assert _found(stack, corpus / "doc00011.md") and _found(stack, corpus / "doc00000.md")

    # The API finds every document the pipeline wrote unchanged: the same chunks, ids and versions.
    code, out, _ = _ingest(next_to_stack, corpus, "--via", "api")
    assert code == 0 and "0 added, 0 updated, 24 unchanged, 0 skipped" in out, out
