"""``ragserve ingest``: files → documents → chunks → embeddings → Milvus, the way that fits
(:mod:`deployments.ingest.route`): through a running server's API, the bulk pipeline on its Ray
cluster, the pipeline on a local Ray of its own, or all in this process (``--local``).

With API keys (``auth.keys_file``) and ``RAGSERVE_API_KEY`` set, ingest writes as that key, whichever
way it goes: its tenant's collection, and only with its ``write`` scope. Without a key it writes the
collection as named, as an operator does.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from deployments.config import AppConfig, load_config_or_defaults
from deployments.envs import env
from deployments.ingest import route as routing
from deployments.ingest.pipeline import FileReport

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``ingest`` subcommand."""
    s = sub.add_parser("ingest", help="ingest .txt/.md/.html/.pdf/.jsonl files or directories")
    s.add_argument("paths", nargs="+", help="files, directories, or s3:// / gs:// URIs; on a cluster they must "
                   "be readable on every node (the shared volume), since worker nodes parse them")
    s.add_argument("--collection", help="target collection (default: the configured one)")
    how = s.add_mutually_exclusive_group()
    how.add_argument("--local", action="store_true", help="run in this process instead of a Ray Data pipeline")
    how.add_argument("--address", help="Ray cluster to run the pipeline on (default: the running server's, or a "
                     "new local one)")
    how.add_argument("--via", choices=("api", "cluster"), help="next to a running server: post through its API, "
                     "or join its Ray cluster, whatever the batch size (default: by ingest.api_max_documents)")
    s.add_argument("--verbose", "-v", action="store_true", help="print every document, not only skipped ones")
    s.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_ingest)


def writer(cfg: AppConfig) -> tuple[str, str | None]:
    """``(tenant, API key)`` ingest writes as: the key in ``RAGSERVE_API_KEY`` when the config has
    keys (checked against the keys file: known, with the ``write`` scope), else no tenant, no key.

    Raises:
        UnauthorizedError, ForbiddenError: the key is unknown or revoked, or cannot write.
    """
    key = env("RAGSERVE_API_KEY")
    if cfg.auth.open or not key:
        return "", None
    from deployments.ingress.auth import KeyStore

    who = KeyStore(cfg.auth.keys_file).authenticate(f"Bearer {key}")  # type: ignore[arg-type]
    who.require("write")
    return who.tenant, key


def cmd_ingest(args: argparse.Namespace) -> int:
    """Ingest the given paths; exit 1 when nothing was found or every file was skipped."""
    from deployments.ingest import bulk, sources
    from deployments.stack import http_endpoint

    start = time.perf_counter()
    cfg = load_config_or_defaults(args.config)
    if args.collection:  # the pipeline's actors open the collection the config names
        cfg = cfg.model_copy(update={"search": cfg.search.model_copy(update={
            "milvus": cfg.search.milvus.model_copy(update={"collection": args.collection})})})
    tenant, key = writer(cfg)
    # Listed before anything starts: a missing path or a local:// URI fails at once (ConfigError).
    refs = [] if args.local else sources.list_files(args.paths)
    server = None if args.local or args.address else routing.probe(*http_endpoint(args.config),
                                                                   writable=cfg.auth.open or key is not None)
    batch = routing.estimate(refs, cfg.ingest)
    way = routing.decide(batch, server, cfg, local=args.local, address=args.address, via=args.via)
    print(f"ingest: {way.reason}", file=sys.stderr)
    if way.kind == "api":
        reports, rows = _through_api(args, cfg, refs, server, key)
        name = cfg.search.milvus.collection
    else:
        reports, rows, name = _in_pipeline(args, cfg, refs, way, batch, server, tenant, key)
    for r in reports:
        if r.status == "skipped" or args.verbose:
            print(f"{r.status:9} {r.chunks:4d} chunks  {r.source}" + (f"  ({r.reason})" if r.reason else ""))
    status, line = bulk.outcome(reports)
    print(f"{line}; {rows if rows is not None else '?'} chunks in '{name}' ({time.perf_counter() - start:.1f}s)",
          file=sys.stderr if status else sys.stdout)
    return status


def _through_api(args: argparse.Namespace, cfg: AppConfig, refs: list, server: routing.Server | None,
                 key: str | None) -> tuple[list[FileReport], int | None]:
    from deployments.ingest import upload

    assert server is not None
    # The collection the config names (``--collection`` is in it), not the server's default: the
    # pipeline writes that one, and a config may name another collection than the server's.
    return upload.run(refs, cfg, server.url, key, cfg.search.milvus.collection, progress=not args.quiet)


def _in_pipeline(args: argparse.Namespace, cfg: AppConfig, refs: list, way: routing.Route, batch: routing.Batch,
                 server: routing.Server | None, tenant: str, key: str | None) -> tuple[list[FileReport], int, str]:
    """The bulk pipeline (or ``--local``) into the config's encoder's copy of the collection."""
    from deployments.search.store import ChunkStore, connect
    from deployments.stack import ensure_milvus

    lite = ensure_milvus(cfg)
    try:
        embedder = None
        dim = server.dim if server is not None and server.dim else None
        if dim is None or way.kind == "local":  # a running server's /readyz gave it; else load the model here
            from deployments.encoder.model import Embedder

            embedder = Embedder(cfg.encoder)
            dim = embedder.dim
        store = ChunkStore(connect(cfg.search.milvus), cfg.search, dim, cfg.stored_copy(tenant=tenant))
        store.ensure_collection()
        if way.kind == "local":
            from deployments.ingest.pipeline import ingest_paths

            reports = ingest_paths(args.paths, store, embedder, cfg.ingest, cfg.preprocess)
        else:
            store.purge_tombstones()  # left by an interrupted run (ingest_paths does it itself)
            reports = _on_ray(args, cfg, refs, way, batch, server, store, key)
        return reports, store.count(), store.name
    finally:
        if lite is not None:
            lite.stop()


def _on_ray(args: argparse.Namespace, cfg: AppConfig, refs: list, way: routing.Route, batch: routing.Batch,
            server: routing.Server | None, store, key: str | None) -> list[FileReport]:
    """The bulk pipeline on a new local Ray, the cluster at ``--address``, or the running server's
    cluster within what its replicas leave free (its API when nothing is)."""
    import ray

    from deployments import envs
    from deployments.ingest import bulk
    from deployments.stack import init_ray

    beside_app = way.kind == "join" and not args.address  # the server's cluster: its replicas come first
    init_ray(way.address, found_here=beside_app, include_dashboard=False, logging_level=logging.WARNING,
             runtime_env=envs.runtime_env(passthrough=True))
    try:
        shape = None
        if beside_app:
            free = ray.available_resources().get("CPU", 0.0) - bulk.app_headroom_cpus(cfg)
            shape = bulk.fit(free, cfg.ingest)
            if shape is None:
                ray.shutdown()
                way = routing.decide(batch, server, cfg, via=args.via, cluster_full=True)
                print(f"ingest: {way.reason}", file=sys.stderr)
                return _through_api(args, cfg, refs, server, key)[0]
            print(f"ingest: {free:.2f} CPUs free beside the app: {shape.embed_actors} embedding actor(s) of "
                  f"{shape.embed_actor_cpus:g} CPUs", file=sys.stderr)
        return bulk.run(refs, cfg, store.dim, progress=not args.quiet, shape=shape, collection=store.name)
    finally:
        if ray.is_initialized():
            ray.shutdown()
