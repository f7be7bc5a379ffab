"""Copying a collection to another encoder: what ``ragserve tune rollout`` and ``rollback`` move.

Every encoder has its own copy of each collection (``protocol.types.encoded_collection``: the
served name plus the encoder's tag), so a query vector is only ever searched against passages its
own encoder embedded, whichever encoder replica answered it during a switch. A switch from
encoder A to B therefore needs B's copy of every collection A serves, up to date:

1. a **sync pass** from A's copy to B's (all documents the first time, else only what changed),
   re-embedding documents with B through a Ray Data pipeline (the bulk ingestion's actors);
2. the app is redeployed with B (a Serve rolling update: replicas of A and B answer side by side
   until it is done, each against its own copy);
3. a second sync pass carries over the writes A's replicas took during the update.

A sync pass decides per document, from each copy's ``doc_hash`` (the document version) and
``updated_at`` (kept as written: a copy keeps the original write's time):

* missing in B: copied if it is new since B's last sync (or B was never synced); otherwise it was
  deleted through B after that sync and stays deleted;
* another version in B: copied when A's is newer;
* in B but no longer in A: deleted from B when B's copy is older than B's last sync (it was
  deleted through A since); a newer one was written through B and stays.

The time of the last completed pass is kept on B's collection (property :data:`SYNCED_AT`), so the
next pass, and a rollback (the same switch, from B to A), moves only what changed since.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deployments.config import AppConfig
from deployments.errors import ConfigError
from deployments.protocol.types import encoded_collection, encoder_tag, split_encoded
from deployments.search.filters import LIVE, quote
from deployments.tune import artefacts

log = logging.getLogger(__name__)
#: A copy's property: when the last sync pass into it began (epoch seconds).
SYNCED_AT = "ragserve.synced_at"
_META = ["doc_id", "doc_hash", "updated_at"]
#: The switches made, one JSON line each, in the artefacts directory (what ``rollback`` reads).
HISTORY = "rollouts.jsonl"


@dataclass(frozen=True)
class DocState:
    """One document in one copy: its version and when it was written."""

    version: str
    updated_at: int


@dataclass
class Plan:
    """What a sync pass does to the target copy."""

    copy: list[str] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    kept: int = 0


def states(store: Any, batch: int = 2000) -> dict[str, DocState]:
    """Every live document of a copy (``ChunkStore``): version and newest chunk write time."""
    it = store.client.query_iterator(store.name, batch_size=batch, filter=LIVE, output_fields=_META,
                                     timeout=store.timeout)
    out: dict[str, DocState] = {}
    try:
        while page := it.next():
            for r in page:
                prev = out.get(r["doc_id"])
                out[r["doc_id"]] = DocState(r["doc_hash"], max(int(r["updated_at"]), prev.updated_at if prev else 0))
    finally:
        it.close()
    return out


def plan(source: dict[str, DocState], target: dict[str, DocState], synced_at: int | None) -> Plan:
    """The pass's decisions (see the module docstring); ``synced_at`` None: the target is new."""
    p = Plan()
    for doc_id, s in sorted(source.items()):
        t = target.get(doc_id)
        if t is None:
            if synced_at is None or s.updated_at >= synced_at:
                p.copy.append(doc_id)
        elif t.version != s.version and s.updated_at > t.updated_at:
            p.copy.append(doc_id)
        else:
            p.kept += 1
    for doc_id, t in sorted(target.items()):
        if doc_id not in source and synced_at is not None and t.updated_at < synced_at:
            p.delete.append(doc_id)
    return p


class ReEmbed:
    """Ray Data actor: read documents from the source copy, embed them with the target encoder,
    hand them to the bulk pipeline's writer (``ingest.bulk.Write``) whole."""

    def __init__(self, cfg: AppConfig, source: str, target: str) -> None:
        from deployments.encoder.model import Embedder
        from deployments.search.store import ChunkStore, connect

        client = connect(cfg.search.milvus)
        self.embedder = Embedder(cfg.encoder)
        self.source = ChunkStore(client, cfg.search, self.embedder.dim, source)
        self.target = ChunkStore(client, cfg.search, self.embedder.dim, target)
        self.batch = cfg.ingest.embed_batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from deployments.search.store import OUTPUT_FIELDS

        doc_ids = [str(d) for d in batch["doc_id"]]
        ids = ", ".join(quote(d) for d in doc_ids)
        fields = [*OUTPUT_FIELDS, "content_hash", "doc_hash", "lexical", "acl", "live"]
        rows = self.source.client.query(self.source.name, filter=f"doc_id in [{ids}] and {LIVE}",
                                        output_fields=list(dict.fromkeys(fields)), timeout=self.source.timeout)
        rows.sort(key=lambda r: (r["doc_id"], r["chunk_index"]))
        vectors = self.embedder.embed([r["text"] for r in rows], batch_size=self.batch)
        old = self.target.document_states(doc_ids)
        writes = []
        for doc_id in doc_ids:
            mine = [{**r, "dense": v} for r, v in zip(rows, vectors, strict=True) if r["doc_id"] == doc_id]
            if mine:  # gone from the source since it was planned: nothing to copy
                report = json.dumps({"doc_id": doc_id, "chunks": len(mine)})
                writes.append(pickle.dumps((doc_id, mine, sorted(old.get(doc_id, {})), report)))
        return {"report": np.array([""] * len(writes), dtype=object), "write": np.array(writes, dtype=object)}


def copy_documents(cfg: AppConfig, source: str, target: str, doc_ids: list[str], dim: int) -> int:
    """Re-embed ``doc_ids`` of ``source`` into ``target`` with ``cfg.encoder`` on the connected Ray
    cluster; returns the chunks written."""
    import ray

    from deployments.ingest import bulk

    if not doc_ids:
        return 0
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars, ctx.target_max_block_size = False, bulk.BLOCK_BYTES
    icfg = cfg.ingest
    # The app runs on the same cluster: the embedding actors take what its replicas leave free
    # (on a 2-CPU machine the shipped app reserves 1.3 CPUs, and a 1-CPU actor would wait forever).
    cpus = min(icfg.embed_actor_cpus, max(0.25, ray.available_resources().get("CPU", 0.0) - bulk.WRITE_CPUS))
    ds = (ray.data.from_items([{"doc_id": d} for d in doc_ids], override_num_blocks=min(len(doc_ids), 64))
          .map_batches(ReEmbed, fn_constructor_kwargs={"cfg": cfg, "source": source, "target": target},
                       batch_size=icfg.doc_batch_size, concurrency=(1, icfg.embed_actors), num_cpus=cpus)
          .map_batches(bulk.Write, fn_constructor_kwargs={"cfg": cfg, "dim": dim, "collection": target},
                       batch_size=icfg.doc_batch_size, concurrency=1, num_cpus=bulk.WRITE_CPUS))
    written = 0
    for row in ds.iter_rows():
        written += int(json.loads(row["report"])["chunks"])
    return written


def sync(cfg: AppConfig, client: Any, source: str, target: str, dim: int) -> dict[str, Any]:
    """One sync pass from ``source`` to ``target`` (created if missing); returns what it did."""
    from deployments.search.store import ChunkStore

    started = int(time.time())
    src = ChunkStore(client, cfg.search, dim, source)
    dst = ChunkStore(client, cfg.search, dim, target)
    created = dst.ensure_collection(create=True)
    props = client.describe_collection(target, timeout=dst.timeout).get("properties") or {}
    synced_at = None if created or SYNCED_AT not in props else int(props[SYNCED_AT])
    p = plan(states(src), states(dst), synced_at)
    chunks = copy_documents(cfg, source, target, p.copy, dim)
    for doc_id in p.delete:
        dst.delete_document(doc_id)
    client.alter_collection_properties(target, properties={SYNCED_AT: str(started)}, timeout=dst.timeout)
    out = {"source": source, "target": target, "copied": len(p.copy), "chunks": chunks, "deleted": len(p.delete),
           "kept": p.kept, "created": created}
    log.info("sync %s", out)
    return out


# --------------------------------------------------------------------------- the switch
def set_encoder_model(path: Path, model: str) -> None:
    """Write ``encoder.model`` into a serve config YAML in place, keeping its comments and layout;
    checked by reading the result back (nothing else may change, or the file is left as it was)."""
    from deployments.config import load_config

    before, original = load_config(path), path.read_text(encoding="utf-8")
    lines = original.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if re.fullmatch(r"\s+encoder:\s*(#.*)?\n?", line)), None)
    if start is None:
        raise ConfigError(f"{path}: no `encoder:` block under the application's args to set the model in")
    indent = len(lines[start]) - len(lines[start].lstrip())
    child, found = None, None
    for i in range(start + 1, len(lines)):
        text = lines[i].lstrip()
        if not text.strip() or text.startswith("#"):
            continue
        depth = len(lines[i]) - len(text)
        if depth <= indent:
            break
        child = depth if child is None else child
        if depth == child and text.startswith("model:"):
            found = i
            break
    line = f"{' ' * (child or indent + 2)}model: {model}\n"
    if found is None:
        lines.insert(start + 1, line)
    else:
        lines[found] = line
    path.write_text("".join(lines), encoding="utf-8")
    after = load_config(path)
    if after.encoder.model != model or after.model_copy(update={"encoder": before.encoder}) != before:
        path.write_text(original, encoding="utf-8")
        raise ConfigError(f"{path}: could not set encoder.model alone; set it to {model} by hand")


def copies(client: Any, timeout: float, model: str) -> list[str]:
    """The stored collections (every tenant's) embedded by ``model``."""
    from deployments.search.store import list_collections

    tag = encoder_tag(model)
    return [c["name"] for c in list_collections(client, timeout) if split_encoded(c["name"])[1] == tag]


def switch(config_path: Path, model: str, deploy: bool = True) -> dict[str, Any]:
    """Serve ``model`` as the encoder: sync every collection to it, redeploy, sync again, record
    the switch (see the module docstring). When the config already names ``model`` (a switch made
    with ``deploy=False`` and deployed since), only the writes made meanwhile are carried over.
    Needs the app's Ray cluster to be connected."""
    from deployments.config import load_config
    from deployments.encoder.model import Embedder
    from deployments.search.store import connect

    cfg = load_config(config_path)
    again = cfg.encoder.model == model
    old = previous(config_path) if again else cfg.encoder.model
    new_cfg = cfg.model_copy(update={"encoder": cfg.encoder.model_copy(update={"model": model})})
    client = connect(cfg.search.milvus)
    dim = Embedder(new_cfg.encoder).dim
    pairs = [(name, encoded_collection(split_encoded(name)[0], encoder_tag(model)))
             for name in copies(client, cfg.search.milvus.timeout_s, old)]
    started = time.time()
    report: dict[str, Any] = {"from": old, "to": model, "config": str(config_path),
                              "synced": [sync(new_cfg, client, src, dst, dim) for src, dst in pairs]}
    if not again:
        set_encoder_model(config_path, model)
        _record(config_path, old, model, started)
    if deploy and not again:
        report["deploy_s"] = _deploy(new_cfg, config_path)
        report["synced_after_deploy"] = [sync(new_cfg, client, src, dst, dim) for src, dst in pairs]
    report["seconds"] = round(time.time() - started, 1)
    return report


def _record(config_path: Path, old: str, new: str, at: float) -> None:
    history = artefacts.root() / HISTORY
    history.parent.mkdir(parents=True, exist_ok=True)
    with history.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"at": int(at), "from": old, "to": new, "config": str(config_path.resolve())}) + "\n")


def _deploy(cfg: AppConfig, config_path: Path) -> float:
    """Update the running app to ``cfg`` (a Serve rolling update); returns the seconds it took."""
    from ray import serve

    from deployments.app import build_app
    from deployments.config import load_serve_yaml

    app = load_serve_yaml(config_path)["applications"][0]
    t = time.time()
    serve.run(build_app(cfg), name=app.get("name", "ragserve"), route_prefix=app.get("route_prefix", "/"))
    return round(time.time() - t, 1)


def previous(config_path: Path) -> str:
    """The encoder served before the last switch of ``config_path`` (what a rollback returns to)."""
    history = artefacts.root() / HISTORY
    mine = [json.loads(line) for line in history.read_text(encoding="utf-8").splitlines()
            if line.strip()] if history.exists() else []
    mine = [h for h in mine if h["config"] == str(config_path.resolve())]
    if not mine:
        raise ConfigError(f"no rollout of {config_path} is recorded: nothing to roll back")
    return str(mine[-1]["from"])
