"""``ragserve tune`` on the live stack, small: synthetic questions from the deployed generator,
training on Ray Train, the before/after evaluation on held-out questions, a rollout and a
rollback of the tuned encoder while clients keep asking, and a killed training worker resuming
from its checkpoint.

Nothing is faked: the questions are SmolLM2's, filtered through the app's own lexical search;
the model trains on the stack's Ray cluster; the rollout copies the sample collection with the
tuned encoder and redeploys the running app (every stage is replaced, so this takes minutes).
Asserted: what must hold on any machine — zero failed requests during both switches, every
response served by one encoder (the one its own `encoder` field names; the search stage refuses a
mix), writes made during the switch carried over, the resumed run finishing every step. Not
asserted: that training helps (it is measured on the evaluation set: README, "Tuning the
retriever"), or any duration.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from deployments import models
from deployments.bench.sequential import SequentialClients
from deployments.tune import artefacts, data, evaluate, rollout, synth, train

pytestmark = pytest.mark.integration


@dataclass
class Tuning:
    data_dir: Path
    chunks: tuple[data.Chunk, ...]


@pytest.fixture(scope="module")
def tuning(stack, tmp_path_factory: pytest.TempPathFactory) -> Tuning:
    """A training set of the sample collection: synthetic questions only, the bundled sample
    questions held out."""
    from deployments.ingest.parsers import source_doc_id
    from deployments.search.store import ChunkStore, connect

    cfg = stack.cfg
    chunks = data.read_chunks(ChunkStore(connect(cfg.search.milvus), cfg.search, 0, cfg.stored_copy()))
    questions = json.loads((Path(__file__).resolve().parents[2] / "deployments" / "data" /
                            "sample_questions.json").read_text(encoding="utf-8"))
    heldout = [data.HeldOut(id=f"sample-{i}", question=q["question"], lang="en" if q["question"].isascii() else "zh",
                            relevant=(source_doc_id(f"sample_corpus/{q['source']}"),))
               for i, q in enumerate(questions)]
    assert {h.relevant[0] for h in heldout} <= {c.doc_id for c in chunks}
    opts = synth.SynthOptions(per_chunk=10, languages=("en", "mixed"), concurrency=8, seed=1)

    async def pairs():
        async with httpx.AsyncClient(base_url=stack.url, timeout=300) as client:
            return await synth.build_pairs(client, cfg.search.milvus.collection, chunks, [], True, opts)

    got, stats = asyncio.run(pairs())
    print(f"\n[tune] data: {json.dumps(stats)}")
    assert stats["synthetic"]["roundtrip_kept"] <= stats["synthetic"]["questions"] <= stats["synthetic"]["generated"]
    assert len(got) >= 40, stats  # enough to train on: ~8 of 10 generations per English chunk hold a question
    ts = data.TrainingSet(tuple(chunks), tuple(got), tuple(heldout), {"test": True})
    ts.check()
    return Tuning(ts.save(tmp_path_factory.mktemp("tune")), ts.chunks)


BASE = "bundled:all-MiniLM-L6-v2"


def params(**kw) -> train.TrainParams:
    return train.TrainParams(epochs=1, batch_size=8, **kw)


def fit(tuning: Tuning, **kw) -> tuple[Path, dict]:
    return train.fit("encoder", BASE, tuning.data_dir, params(**kw),
                     train.RunOptions(checkpoint_every=2, cpus_per_worker=0.5, max_failures=2))


def test_a_killed_training_worker_resumes_from_its_checkpoint(tuning: Tuning) -> None:
    seed = int(time.time())  # a version of its own: trained here, never reused from the cache
    # This run's own directory (the cache may hold other runs'), and the file Ray Train writes once
    # its controller has registered a checkpoint (the one a restarted worker group resumes from).
    ver = train.version(Path(models.resolve(BASE)), tuning.data_dir, params(seed=seed))
    registered = artefacts.root() / "runs" / artefacts.name("encoder", ver) / "checkpoint_manager_snapshot.json"
    done: dict = {}
    worker = threading.Thread(target=lambda: done.update(zip(("path", "metrics"), fit(tuning, seed=seed))))
    worker.start()
    deadline = time.monotonic() + 600
    while not registered.exists() or not _alive_workers():
        assert worker.is_alive() and time.monotonic() < deadline, "training ended or stalled before a checkpoint"
        time.sleep(0.5)
    victims = _alive_workers()
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    worker.join(timeout=900)
    assert not worker.is_alive(), "training hung after its worker was killed"
    m = done["metrics"]
    print(f"\n[tune] killed worker {victims}; resumed from step {m['resumed_from']} of {m['steps']}")
    assert m["resumed_from"] > 0 and m["step"] == m["steps"]
    assert (done["path"] / artefacts.MANIFEST).exists()


def _alive_workers() -> list[int]:
    """The training workers' pids, by the process title Ray gives an actor's worker
    (``ray::RayTrainWorker...``): the stack runs without a dashboard, so Ray's state API is not
    there to ask."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = proc.info["cmdline"] or []
        if cmd and cmd[0].startswith("ray::RayTrainWorker"):
            found.append(proc.info["pid"])
    return found


@dataclass
class Clients(SequentialClients):
    """Sequential clients (a retrieval, a streamed answer, a document write) until stopped; each
    outcome as (kind, failure, the encoder that served it)."""

    kinds = ("retrieve", "stream", "write")
    pause_s = 0.2
    written: list[str] = field(default_factory=list)

    def ask(self, kind: str, client: httpx.Client) -> tuple[str, str | None, str]:
        try:
            return (kind, *getattr(self, f"_{kind}")(client))
        except httpx.HTTPError as e:
            return kind, f"{type(e).__name__}: {e}", ""

    @staticmethod
    def _retrieve(client: httpx.Client) -> tuple[str | None, str]:
        r = client.post("/v1/retrieve", json={"question": "How long is the Greywater Tunnel?"})
        ok = r.status_code == 200 and r.json()["sources"]
        return (None, r.json()["encoder"]) if ok else (f"{r.status_code} {r.text[:300]}", "")

    @staticmethod
    def _stream(client: httpx.Client) -> tuple[str | None, str]:
        from deployments.client import iter_sse

        body = {"question": "What is the default line width in Quillmark?", "max_tokens": 4, "stream": True}
        with client.stream("POST", "/v1/query", json=body) as r:
            if r.status_code != 200:
                return f"{r.status_code} {r.read()[:300]!r}", ""
            events = list(iter_sse(r.iter_lines()))
        kinds = [e for e, _ in events]
        if not kinds or kinds[-1] != "done" or "error" in kinds:
            return f"stream events {kinds}", ""
        return None, json.loads(next(p for e, p in events if e == "sources"))["encoder"]

    def _write(self, client: httpx.Client) -> tuple[str | None, str]:
        doc_id = f"switch-note-{len(self.written)}"
        r = client.post("/v1/documents", json={"documents": [{
            "id": doc_id, "title": "Switch note", "text": f"Maintenance note {doc_id}: the Zephyrine valve "
            f"{doc_id} was inspected during the encoder switch."}]})
        if r.status_code != 200:
            return f"{r.status_code} {r.text[:300]}", ""
        self.written.append(doc_id)
        return None, ""


def _serve_config(stack, path: Path) -> Path:
    app = {"name": "ragserve", "route_prefix": "/", "import_path": "deployments.app:app_builder",
           "args": stack.cfg.model_dump(mode="json")}
    path.write_text(yaml.safe_dump({"applications": [app]}, sort_keys=False), encoding="utf-8")
    return path


def _switch_under_load(stack, config: Path, model: str, label: str) -> Clients:
    clients = Clients(stack.url).start()
    time.sleep(3)
    report = rollout.switch(config, model)
    time.sleep(5)
    outcomes = clients.stop()
    failures = [(k, f) for k, f, _ in outcomes if f]
    served = Counter(e for k, f, e in outcomes if not f and k != "write")
    print(f"\n[tune] {label}: {len(outcomes)} requests, {len(failures)} failed, served by {dict(served)}; "
          f"deploy {report.get('deploy_s')} s; {json.dumps(report['synced'])}")
    assert not failures, failures[:5]
    assert {k for k, _, _ in outcomes} == {"retrieve", "stream", "write"}
    return clients


def test_tune_evaluate_roll_out_and_back_under_load(stack, tuning: Tuning, tmp_path: Path) -> None:
    from deployments.search.store import connect

    path, metrics = fit(tuning, seed=0)
    model = artefacts.reference("encoder", artefacts.manifest(path)["version"])
    heldout = data.TrainingSet.load(tuning.data_dir).heldout
    report = evaluate.compare(models.resolve("bundled:all-MiniLM-L6-v2"), str(path), tuning.chunks, heldout)
    print(f"\n[tune] {model}: {json.dumps(metrics)}\n{evaluate.table(report)}")
    assert report["questions"] == len(heldout) and 0 <= report["after"]["overall"]["ndcg@10"] <= 1

    base = stack.cfg.encoder.model
    config = _serve_config(stack, tmp_path / "serve_config.yaml")
    out = _switch_under_load(stack, config, model, "rollout")
    assert yaml.safe_load(config.read_text())["applications"][0]["args"]["encoder"]["model"] == model
    after = stack.client.post("/v1/retrieve", json={"question": f"Zephyrine valve {out.written[-1]}", "top_k": 3,
                                                    "mode": "lexical"}).json()
    assert after["encoder"] == model  # every replica runs the tuned encoder now...
    assert out.written[-1] in {s["doc_id"] for s in after["sources"]}  # ... and has the writes made meanwhile

    back = _switch_under_load(stack, config, rollout.previous(config), "rollback")
    final = stack.client.post("/v1/retrieve", json={"question": f"Zephyrine valve {back.written[-1]}", "top_k": 3,
                                                    "mode": "lexical"}).json()
    assert final["encoder"] == base and back.written[-1] in {s["doc_id"] for s in final["sources"]}
    assert stack.client.post("/v1/retrieve", json={"question": f"Zephyrine valve {out.written[-1]}", "top_k": 3,
                                                    "mode": "lexical"}).json()["encoder"] == base
    client = connect(stack.cfg.search.milvus)
    for doc in out.written + back.written:
        stack.client.delete(f"/v1/documents/{doc}")
    for name in client.list_collections():
        if name.endswith(model.removeprefix("tuned:encoder-")):
            client.drop_collection(name)
