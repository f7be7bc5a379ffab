"""``ragserve tune``: data -> train -> eval (``run`` does all three), then ``rollout``/``rollback``.

``data`` needs the running server (synthetic questions and mined negatives go through its HTTP
API) and its Milvus (the collection's chunks are read directly, as bulk ingestion writes them);
``train`` needs Ray (a local one is started, or ``--address``); ``eval`` runs in this process;
``rollout`` and ``rollback`` connect to the app's Ray cluster (``--address``, default ``auto``: the
one on this machine) and update the app and its config file (``deployments/tune/rollout.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import httpx

from deployments.config import AppConfig, load_config_or_defaults
from deployments.envs import env
from deployments.tune import artefacts, data, evaluate, synth, train

BUNDLED = "bundled"


# --------------------------------------------------------------------------- steps
def make_data(args: argparse.Namespace, cfg: AppConfig) -> Path:
    """Build and save the training set (``tune data``)."""
    from deployments.search.store import ChunkStore, connect

    name = args.collection or cfg.search.milvus.collection
    store = ChunkStore(connect(cfg.search.milvus), cfg.search, 0, cfg.stored_copy(name, args.tenant or ""))
    chunks = data.read_chunks(store)
    if not chunks:
        raise SystemExit(f"collection {store.name!r} holds no chunks")
    labelled = data.read_jsonl(args.pairs, data.Labelled) if args.pairs else []
    train_labelled, heldout_labelled = data.split(labelled, args.heldout_fraction, args.seed)
    heldout = data.heldout_of(heldout_labelled)
    if args.heldout_set:
        heldout += data.heldout_from_evalset(None if args.heldout_set == BUNDLED else Path(args.heldout_set))
    opts = synth.SynthOptions(per_chunk=args.per_chunk, max_chunks=args.max_chunks, seed=args.seed,
                              languages=tuple(cfg.search.dense_languages), concurrency=args.concurrency,
                              negatives_from="hybrid" if args.kind == "reranker" else "dense")
    pairs, stats = asyncio.run(_pairs(args, name, chunks, train_labelled, opts))
    meta = {"collection": name, "tenant": args.tenant or "", "seed": args.seed, "steps": stats,
            "synthetic_options": {k: v for k, v in vars(opts).items()}}
    trained = {p.question.strip().casefold() for p in pairs}
    heldout = [h for h in heldout if h.question.strip().casefold() not in trained]
    ts = data.TrainingSet(tuple(chunks), tuple(pairs), tuple(heldout), meta)
    ts.check()
    out = ts.save(args.data)
    print(json.dumps({"data": str(out), **stats, "heldout": len(heldout)}, indent=2))
    return out


async def _pairs(args: argparse.Namespace, collection: str, chunks: list[data.Chunk],
                 labelled: list[data.Labelled], opts: synth.SynthOptions) -> tuple[list[data.Pair], dict]:
    key = args.api_key or env("RAGSERVE_API_KEY")
    headers = {"authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(base_url=args.url, timeout=args.timeout, headers=headers) as client:
        return await synth.build_pairs(client, collection, chunks, labelled, not args.no_synthetic, opts)


def params_of(args: argparse.Namespace) -> train.TrainParams:
    return train.TrainParams(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                             hard_negatives=args.hard_negatives, seed=args.seed, workers=args.workers,
                             max_seq_length=args.max_seq_length)


def base_of(args: argparse.Namespace, cfg: AppConfig) -> str:
    """The model trained from: ``--base``, else the encoder the config serves (a reranker starts
    from the encoder's weights too: no package carries cross-encoder weights)."""
    return args.base or cfg.encoder.model


def run_train(args: argparse.Namespace, cfg: AppConfig) -> Path:
    """Train on Ray and publish the artefact (``tune train``); prints its reference."""
    import ray

    from deployments.stack import init_ray

    init_ray(args.address, include_dashboard=False)
    try:
        run = train.RunOptions(checkpoint_every=args.checkpoint_every, max_failures=args.max_failures,
                               use_gpu=args.gpu, cpus_per_worker=args.cpus_per_worker)
        path, metrics = train.fit(args.kind, base_of(args, cfg), args.data, params_of(args), run)
    finally:
        ray.shutdown()
    ref = artefacts.reference(args.kind, path.name.split("-", 1)[1])
    print(json.dumps({"model": ref, "path": str(path), **metrics}, indent=2))
    return path


def run_eval(args: argparse.Namespace, cfg: AppConfig, path: Path | None = None) -> dict[str, Any]:
    """Before/after on the held-out questions; records the result in the artefact (``tune eval``)."""
    from deployments import models

    path = path or artefacts.path_of(args.model)
    if artefacts.manifest(path)["kind"] != "encoder":
        raise SystemExit("tune eval compares encoders (a reranker is measured with `ragserve eval`)")
    ts = data.TrainingSet.load(args.data)
    report = evaluate.compare(models.resolve(base_of(args, cfg)), str(path), ts.chunks, ts.heldout)
    gain = report["gain"]["ndcg@10"]
    offered = gain >= args.min_gain
    artefacts.update_manifest(path, evaluation=report, min_gain=args.min_gain, offered=offered)
    print(evaluate.table(report))
    verdict = "offered for rollout" if offered else f"NOT offered: the gain is below --min-gain {args.min_gain}"
    print(f"\n{artefacts.reference('encoder', artefacts.manifest(path)['version'])}: {verdict}")
    return report


def run_switch(args: argparse.Namespace) -> dict[str, Any]:
    """Roll a tuned encoder out, or the last rollout back (``tune rollout`` / ``tune rollback``)."""
    import ray

    from deployments import envs
    from deployments.config import config_path
    from deployments.stack import init_ray
    from deployments.tune import rollout

    config = config_path(args.config)
    if args.step == "rollback":
        model = rollout.previous(config)
    else:
        if not args.model:
            raise SystemExit("tune rollout needs --model tuned:encoder-<version>")
        path = artefacts.path_of(args.model)
        meta = artefacts.manifest(path)
        if meta["kind"] != "encoder":
            raise SystemExit(f"{args.model} is a {meta['kind']}, not an encoder")
        if not meta.get("offered") and not args.force:
            raise SystemExit(f"{args.model} was not offered for rollout (run `ragserve tune eval` and beat "
                             "--min-gain; --force rolls it out anyway)")
        model = args.model
    init_ray(args.address or "auto", include_dashboard=False, runtime_env=envs.runtime_env(passthrough=True))
    try:
        report = rollout.switch(config, model, deploy=not args.no_deploy)
    finally:
        ray.shutdown()
    print(json.dumps(report, indent=2))
    return report


def cmd_tune(args: argparse.Namespace) -> int:
    if args.step in ("rollout", "rollback"):
        run_switch(args)
        return 0
    cfg = load_config_or_defaults(args.config)
    if args.step in ("data", "run"):
        make_data(args, cfg)
    path = run_train(args, cfg) if args.step in ("train", "run") else None
    if args.step in ("eval", "run") and (args.step == "eval" or args.kind == "encoder"):
        run_eval(args, cfg, path)
    return 0


# --------------------------------------------------------------------------- parser
def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``ragserve tune``."""
    s = sub.add_parser("tune", help="fine-tune the encoder on a collection: data, train, eval (run = all three), "
                       "then rollout / rollback")
    s.add_argument("step", choices=("data", "train", "eval", "run", "rollout", "rollback"))
    s.add_argument("--data", type=Path, default=Path("data/tune"), help="training set directory")
    g = s.add_argument_group("data (needs the running server)")
    g.add_argument("--url", default="http://127.0.0.1:8000", help="ragserve base URL")
    g.add_argument("--api-key", help="a key with the query scope (default: $RAGSERVE_API_KEY)")
    g.add_argument("--collection", help="collection to train on (default: the configured one)")
    g.add_argument("--tenant", help="the collection's tenant on a server with keys")
    g.add_argument("--pairs", type=Path, help="labelled .jsonl: {\"question\": ..., \"doc_id\": ...} per line")
    g.add_argument("--heldout-fraction", type=float, default=0.2, help="labelled questions kept out of training")
    g.add_argument("--heldout-set", metavar="DIR", help="an evaluation set (ragserve eval's format) whose questions "
                   f"are held out; '{BUNDLED}': the bundled one")
    g.add_argument("--no-synthetic", action="store_true", help="no synthetic questions (labelled pairs only)")
    g.add_argument("--per-chunk", type=int, default=2, help="synthetic questions written per chunk")
    g.add_argument("--max-chunks", type=int, help="a seeded sample of chunks to write questions for")
    g.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    g.add_argument("--timeout", type=float, default=300, help="seconds per request")
    g = s.add_argument_group("train (on Ray)")
    g.add_argument("--kind", choices=("encoder", "reranker"), default="encoder")
    g.add_argument("--base", help="model reference to start from (default: the config's encoder.model)")
    g.add_argument("--epochs", type=int, default=3)
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--lr", type=float, default=2e-5)
    g.add_argument("--hard-negatives", type=int, default=1, help="mined negatives per question in each step")
    g.add_argument("--max-seq-length", type=int, default=256)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--workers", type=int, default=1, help="Ray Train workers (data parallel)")
    g.add_argument("--cpus-per-worker", type=float, default=1.0)
    g.add_argument("--gpu", action="store_true", help="one GPU per worker")
    g.add_argument("--checkpoint-every", type=int, default=10, help="steps between checkpoints")
    g.add_argument("--max-failures", type=int, default=2, help="worker failures survived (resuming from a checkpoint)")
    g.add_argument("--address", help="Ray cluster (default: start a local one)")
    g = s.add_argument_group("eval")
    g.add_argument("--model", help="tuned model reference to evaluate (tune eval)")
    g.add_argument("--min-gain", type=float, default=0.01, help="held-out nDCG@10 gain needed to offer a rollout")
    g = s.add_argument_group("rollout / rollback (the config file given by --config is updated)")
    g.add_argument("--force", action="store_true", help="roll out a model that was not offered")
    g.add_argument("--no-deploy", action="store_true",
                   help="copy the collections and update the config only (deploy it yourself, e.g. a RayService; "
                   "then run the same command again to carry over the writes made meanwhile)")
    s.set_defaults(fn=cmd_tune)

