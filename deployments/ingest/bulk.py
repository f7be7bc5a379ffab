"""Bulk ingestion as a Ray Data pipeline: read → parse → chunk + embed (actor pool) → write.

    files ──parse (tasks)──▶ documents ──Embed (actor pool: chunk, skip unchanged, embed,
    analyse)──▶ rows ──Write (actors: one upsert per batch of documents)──▶ reports

The unit flowing through the pipeline is a *document* with all its chunks, so each document is
written whole in one request (the atomic-replace guarantee of ``ChunkStore.replace_document``)
however the pipeline is split across a cluster. Unchanged documents are found before embedding
and cost one Milvus query, which is also what makes an interrupted run cheap to resume: the
re-run skips what was written and completes the rest, and purges tombstones first.

It runs on whatever Ray cluster the process is connected to (a local one by default), so the
same command scales out by joining a bigger cluster (``ragserve ingest --address ...``). Files are
listed on the driver and read by the parse tasks on the worker nodes, so they must be on storage
every node reaches: a shared mount or object storage (:mod:`deployments.ingest.sources`).
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from deployments.config import AppConfig, IngestConfig
from deployments.ingest import pipeline, sources
from deployments.ingest.parsers import BadFile, Document, check_size, check_suffix, parse_bytes
from deployments.ingest.pipeline import FileReport

log = logging.getLogger(__name__)
#: Parsing is light; a whole CPU per parse task would leave none for the embedding actors on a
#: small machine (with 2 CPUs, one embedding actor + one writer + one 1-CPU parse task deadlock).
PARSE_CPUS = 0.25
#: The writer mostly waits on Milvus.
WRITE_CPUS = 0.1
#: Target size of the blocks between stages (about a hundred parsed documents).
BLOCK_BYTES = 256 * 1024
#: Below this many free CPUs a cluster has no room for the pipeline at all.
MIN_PIPELINE_CPUS = 0.1


@dataclass(frozen=True)
class Shape:
    """The CPUs the pipeline reserves on the cluster: its embedding actors (how many, CPUs each),
    each parse task, the writer, and the most it may hold at once (None: no cap but the cluster's)."""

    embed_actors: int
    embed_actor_cpus: float
    parse_cpus: float = PARSE_CPUS
    write_cpus: float = WRITE_CPUS
    cpu_limit: float | None = None

    @classmethod
    def configured(cls, icfg: IngestConfig) -> "Shape":
        """The pipeline as ``ingest`` configures it, on a cluster of its own."""
        return cls(icfg.embed_actors, icfg.embed_actor_cpus)


def fit(free_cpus: float, icfg: IngestConfig) -> Shape | None:
    """The pipeline within ``free_cpus`` of a cluster it shares (with a serving app): as many of the
    configured embedding actors as fit, at least one; when not even one fits at its configured
    CPUs, every reservation shrinks in proportion. None: less than :data:`MIN_PIPELINE_CPUS` free.

    Ray schedules by these reservations, not by use: what the pipeline reserves is what the app's
    replicas can no longer be placed on, so it takes only what is free. (The actors still compute
    at the speed of whatever cores are idle.)
    """
    if free_cpus < MIN_PIPELINE_CPUS:
        return None
    fixed = PARSE_CPUS + WRITE_CPUS
    actors = math.floor(round((free_cpus - fixed) / icfg.embed_actor_cpus, 6))
    if actors >= 1:
        return Shape(min(actors, icfg.embed_actors), icfg.embed_actor_cpus, cpu_limit=free_cpus)
    scale = free_cpus / (fixed + icfg.embed_actor_cpus)
    # Ray counts resources in units of 1e-4: round down so the three together never exceed what is free.
    def part(x: float) -> float:
        return math.floor(x * scale * 10_000) / 10_000

    return Shape(1, part(icfg.embed_actor_cpus), part(PARSE_CPUS), part(WRITE_CPUS), cpu_limit=free_cpus)


def app_headroom_cpus(cfg: AppConfig) -> float:
    """CPUs the app's replicas may still claim: every deployment from its minimum to its maximum
    replicas (what autoscaling may add). A rolling update's surge replicas are not counted: an
    update started during a bulk ingest waits, still serving, until the pipeline ends."""
    from deployments import stages
    from deployments.render.capacity import replica_bounds

    total = 0.0
    for stage in stages.enabled(cfg):
        opts = stage.config(cfg).deployment
        low, high = replica_bounds(opts)
        total += (high - low) * opts.resources.num_cpus
    return total


# Rows between the stages carry opaque payloads: a document or report as JSON text, a write as
# pickled bytes. Arrow would otherwise re-type nested values (an int next to a null becomes a
# float, which Milvus then rejects for an INT64 field).
def _json(obj: Any) -> str:
    return json.dumps(asdict(obj), ensure_ascii=False)


def parse_ref(ref: sources.FileRef, cfg: AppConfig) -> tuple[list[Document], list[FileReport]]:
    """Read and parse one listed file where this runs (a worker node); a file this node cannot read
    or parse becomes a ``skipped`` report, never an exception."""
    try:
        name = PurePosixPath(ref.uri).name
        check_suffix(name)
        check_size(ref.size, cfg.ingest)  # before reading: a huge file is never fetched
        parsed = parse_bytes(sources.read(ref), name, ref.source, ref.mtime, cfg.ingest)
    except (BadFile, OSError) as e:
        return [], [FileReport(ref.source, "skipped", reason=str(e))]
    return parsed.documents, [FileReport(ref.source, "skipped", reason=p) for p in parsed.problems]


def _parse(row: dict[str, Any], cfg: AppConfig) -> list[dict[str, Any]]:
    """One file → one row per document, or one row per problem (status ``skipped``)."""
    docs, bad = parse_ref(sources.FileRef(**row), cfg)
    return [{"doc": _json(d), "report": ""} for d in docs] + [{"doc": "", "report": _json(r)} for r in bad]


def outcome(reports: list[FileReport]) -> tuple[int, str]:
    """The exit status of an ingest and its last line: 1 when nothing was found or every file was
    skipped (a silent total skip is a failure), with a hint when the files were missing where they
    were parsed."""
    counts = {k: sum(r.status == k for r in reports) for k in ("added", "updated", "unchanged", "skipped")}
    line = ", ".join(f"{v} {k}" for k, v in counts.items())
    if not reports:
        return 1, "no files found"
    if counts["skipped"] < len(reports):
        return 0, line
    if any("No such file" in r.reason for r in reports):
        line += ("; files missing on the nodes that parsed them: put them on storage every Ray node "
                 "reads (the shared volume, /data/ingest in the pods, or s3:// / gs:// URIs)")
    return 1, f"every file was skipped ({line})"


class Embed:
    """Actor: chunk each document, drop the unchanged ones, embed and analyse the rest (compared with
    ``collection``, default: the config's encoder's copy of the configured collection)."""

    def __init__(self, cfg: AppConfig, collection: str | None = None) -> None:
        from deployments.encoder.model import Embedder
        from deployments.preprocess import text
        from deployments.search.store import ChunkStore, connect

        self.cfg = cfg
        self.embedder = Embedder(cfg.encoder)
        self.store = ChunkStore(connect(cfg.search.milvus), cfg.search, self.embedder.dim,
                                collection or cfg.stored_copy())
        text.warm_up()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from deployments.preprocess.text import document_lexical

        icfg, pcfg = self.cfg.ingest, self.cfg.preprocess
        docs = [Document(**{**d, "tags": tuple(d["tags"])}) for d in map(json.loads, filter(None, batch["doc"]))]
        plans = [pipeline.plan(d, self.embedder.count_tokens, icfg, pcfg) for d in docs]
        states = self.store.document_states([d.doc_id for d in docs])
        todo = [p for p in plans if not pipeline.is_unchanged(p, states.get(p.doc.doc_id, {}))]
        changed = {p.doc.doc_id for p in todo}
        texts = [t for p in todo for t in p.texts]
        vectors = iter(self.embedder.embed(texts, batch_size=icfg.embed_batch_size))
        out_reports, out_writes = [str(r) for r in batch["report"] if r], []
        for p in plans:
            stored = states.get(p.doc.doc_id, {})
            if p.doc.doc_id not in changed:
                out_reports.append(_json(FileReport(p.doc.source, "unchanged", len(p.texts), doc_id=p.doc.doc_id)))
                continue
            rows = pipeline.rows(p, [next(vectors) for _ in p.texts], [document_lexical(t, pcfg) for t in p.texts])
            status = "updated" if stored else "added"
            out_writes.append(pickle.dumps((p.doc.doc_id, rows, sorted(stored),
                                            _json(FileReport(p.doc.source, status, len(rows), doc_id=p.doc.doc_id)))))
        return {"report": np.array(out_reports + [""] * len(out_writes), dtype=object),
                "write": np.array([b""] * len(out_reports) + out_writes, dtype=object)}


class Write:
    """Actor: write each batch of documents with one upsert (each document whole), into
    ``collection`` (default: the config's encoder's copy of the configured collection)."""

    def __init__(self, cfg: AppConfig, dim: int, collection: str | None = None) -> None:
        from deployments.search.store import ChunkStore, connect

        self.store = ChunkStore(connect(cfg.search.milvus), cfg.search, dim, collection or cfg.stored_copy())

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        writes = [pickle.loads(w) for w in batch["write"] if w]
        self.store.replace_documents([(doc_id, rows, old) for doc_id, rows, old, _ in writes])
        return {"report": np.array([str(r) for r in batch["report"] if r] + [w[3] for w in writes], dtype=object)}


def run(files: Iterable[sources.FileRef], cfg: AppConfig, dim: int, progress: bool = True,
        shape: Shape | None = None, collection: str | None = None) -> list[FileReport]:
    """Ingest the listed ``files`` (:func:`sources.list_files`) on the connected Ray cluster; returns
    one report per document (and per skipped file or line). The caller has created the collection.

    Args:
        shape: the CPUs the pipeline reserves (default: as configured, a cluster of its own).
        collection: the stored collection written (default: the config's encoder's copy of the
            configured collection).
    """
    import ray
    from ray.data import ExecutionResources
    from tqdm import tqdm

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours below counts documents and chunks, not blocks
    # A stage hands a block on when it is full or its input is done: with Ray Data's default
    # (128 MiB), a .jsonl of thousands of documents would reach the writer, and the progress bar,
    # in one piece at the end. Documents are kilobytes: small blocks keep the pipeline streaming.
    ctx.target_max_block_size = BLOCK_BYTES
    icfg, shape = cfg.ingest, shape or Shape.configured(cfg.ingest)
    if shape.cpu_limit is not None:  # parse tasks too stay within what was free
        ctx.execution_options.resource_limits = ExecutionResources.for_limits(cpu=shape.cpu_limit)
    files = [asdict(ref) for ref in files]
    if not files:
        return []
    ds = (
        ray.data.from_items(files, override_num_blocks=min(len(files), 64))
        .flat_map(_parse, fn_kwargs={"cfg": cfg}, num_cpus=shape.parse_cpus)
        .map_batches(Embed, fn_constructor_kwargs={"cfg": cfg, "collection": collection},
                     batch_size=icfg.doc_batch_size, concurrency=(1, shape.embed_actors),
                     num_cpus=shape.embed_actor_cpus)
        .map_batches(Write, fn_constructor_kwargs={"cfg": cfg, "dim": dim, "collection": collection},
                     batch_size=icfg.doc_batch_size, concurrency=1, num_cpus=shape.write_cpus)
    )
    reports: list[FileReport] = []
    chunks, start = 0, time.perf_counter()
    with tqdm(desc="ingest", unit="doc", disable=not progress, smoothing=0.1) as bar:
        for row in ds.iter_rows():
            r = FileReport(**json.loads(row["report"]))
            reports.append(r)
            if r.status != "skipped":
                chunks += r.chunks
                bar.update(1)
                bar.set_postfix(chunks=chunks, chunks_per_s=f"{chunks / (time.perf_counter() - start):.1f}",
                                skipped=sum(x.status == "skipped" for x in reports))
    return reports
