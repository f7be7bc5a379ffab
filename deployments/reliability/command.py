"""``ragserve chaos`` and ``ragserve soak``: the reliability drills, from the command line."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from deployments.reliability.mix import Mix
from deployments.reliability.soak import Bounds

#: Deployments the chaos config gives ``--replicas`` replicas (the generator keeps its one engine).
CPU_DEPLOYMENTS = ("ingress", "preprocess", "encoder", "search")
#: The chaos cluster: a worker of both types (the generator's node) and a CPU-only one to lose.
CHAOS_WORKERS = ("cpu+generator:3", "cpu:2")
#: Deadlines of the chaos config: every failure the app bounds itself shows within about 35 s
#: (the generator's deadline plus the ingress's 5 s grace), well inside the client's 60 s.
CHAOS_DEADLINES = {"ingress": {"request_timeout_s": 10.0}, "generator": {"request_timeout_s": 30.0}}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``chaos`` and ``soak``."""
    from deployments.localcluster.nodes import WorkerSpec

    s = sub.add_parser("chaos", help="the chaos matrix: kill each component in turn under a steady load")
    s.add_argument("--run-dir", default="data/chaos", help="the local cluster's run dir (default data/chaos)")
    s.add_argument("--up", action="store_true", help="start the cluster (config: --config with the chaos "
                   "overrides), ingest the sample corpus, run, and stop it; else use the running cluster of --run-dir")
    s.add_argument("--worker", action="append", type=WorkerSpec.parse, dest="workers",
                   help=f"with --up: worker nodes (default {' '.join(CHAOS_WORKERS)})")
    s.add_argument("--replicas", type=int, default=2, help=f"with --up: replicas of {', '.join(CPU_DEPLOYMENTS)}")
    s.add_argument("--faults", help="comma-separated fault names (default: the whole matrix)")
    _load_args(s, mix="retrieve=2,query=1,stream=1", client_timeout=60.0)
    s.add_argument("--load-fraction", type=float, default=0.7, help="offered rate as a fraction of the capacity")
    s.add_argument("--capacity-concurrency", type=int, default=8, help="closed-loop clients measuring the capacity")
    s.add_argument("--warmup", type=float, default=15.0, help="seconds of load before the first fault")
    s.add_argument("--pre", type=float, default=5.0, help="seconds of each fault's window before its kill")
    s.add_argument("--settle", type=float, default=10.0, help="seconds of load after the app is whole again")
    s.add_argument("--recovery-timeout", type=float, default=240.0, help="longest wait for the app to be whole")
    s.add_argument("--milvus-down", type=float, default=5.0, help="seconds the Milvus server stays down")
    s.add_argument("--out", default="reports/chaos", help="directory for chaos.json and chaos.md")
    s.set_defaults(fn=cmd_chaos)

    s = sub.add_parser("soak", help="a long mixed load on a local stack: memory and fds of every process, leaks")
    s.add_argument("--duration", type=float, default=1800.0, help="seconds of load (default 30 minutes)")
    s.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    s.add_argument("--warmup", type=float, default=60.0, help="seconds of load before the baseline sample")
    _load_args(s, mix="retrieve=3,query=1,stream=2,abandon=1,write=1", client_timeout=150.0)
    s.add_argument("--load-fraction", type=float, default=0.5, help="offered rate as a fraction of the capacity")
    s.add_argument("--rss-bound", type=float, default=Bounds.rss_mib_per_h,
                   help="MiB/hour of RSS growth a process may show (or --rss-fraction of its RSS, if larger)")
    s.add_argument("--rss-fraction", type=float, default=Bounds.rss_fraction_per_h)
    s.add_argument("--fd-bound", type=int, default=Bounds.fds, help="more open fds a process may hold afterwards")
    s.add_argument("--out", default="reports/soak", help="directory for soak.json, soak.md and soak_rss.png")
    s.set_defaults(fn=cmd_soak)


def _load_args(s: argparse.ArgumentParser, mix: str, client_timeout: float) -> None:
    s.add_argument("--mix", default=mix, help=f"request kinds and weights (default {mix}); kinds: "
                   "retrieve, query, stream, abandon, write")
    s.add_argument("--rate", type=float, help="offered requests/s (default: measured, see --load-fraction)")
    s.add_argument("--max-tokens", type=int, default=16, help="tokens per generation")
    s.add_argument("--client-timeout", type=float, default=client_timeout,
                   help="a request unanswered after this many seconds is counted as hung")


def chaos_serve_yaml(serve_yaml: dict[str, Any], replicas: int) -> dict[str, Any]:
    """The chaos drill's Serve config: ``serve_yaml`` with fixed ``replicas`` for the CPU
    deployments (no autoscaling: the count under test is the configured one) and the
    :data:`CHAOS_DEADLINES`."""
    out = json.loads(json.dumps(serve_yaml))
    args = out["applications"][0].setdefault("args", {})
    for name in CPU_DEPLOYMENTS:
        dep = args.setdefault(name, {}).setdefault("deployment", {})
        dep.pop("autoscaling", None)
        dep["num_replicas"] = replicas
    for section, values in CHAOS_DEADLINES.items():
        args.setdefault(section, {}).update(values)
    return out


def _mix(args: argparse.Namespace) -> Mix:
    return Mix.parse(args.mix, max_tokens=args.max_tokens, client_timeout_s=args.client_timeout)


def _up(args: argparse.Namespace, run_dir: Path) -> Any:
    """Start Milvus, ingest the sample corpus, start the nodes and deploy (``--up``)."""
    from deployments.config import config_path, load_config, load_serve_yaml
    from deployments.localcluster import deploy_app, start_nodes
    from deployments.localcluster.nodes import ProcRef, WorkerSpec, stop_cluster
    from deployments.stack import ensure_milvus

    run_dir.mkdir(parents=True, exist_ok=True)
    serve_yaml = chaos_serve_yaml(load_serve_yaml(config_path(args.config)),
                                  args.replicas)
    config = run_dir / "serve.yaml"
    config.write_text(yaml.safe_dump(serve_yaml, sort_keys=False), encoding="utf-8")
    lite = ensure_milvus(load_config(config))
    try:
        _ingest_sample(str(config))
    except BaseException:
        if lite is not None:
            lite.stop()
        raise
    workers = args.workers or [WorkerSpec.parse(w) for w in CHAOS_WORKERS]
    state = start_nodes(run_dir, workers, dashboard=True)  # the dashboard serves Ray's state API
    try:
        if lite is not None and lite.proc is not None:
            state.milvus = ProcRef.of(lite.proc.pid)  # stopped with the cluster (and restarted by the drill)
            state.save()
        deploy_app(state, serve_yaml)
    except BaseException:
        stop_cluster(state)
        raise
    print(f"cluster up: {state.http_url}; nodes {state.timings['nodes_start_s']:.0f}s, "
          f"app {state.timings['app_deploy_s']:.0f}s")
    return state


def cmd_chaos(args: argparse.Namespace) -> int:
    """Run the matrix; print the table; write chaos.json/.md; exit 1 when a fault broke a rule
    that must hold on any machine (see ``chaos.verdict``)."""
    from deployments.localcluster.nodes import ClusterState, _auth_env, stop_cluster

    _auth_env()  # before Ray is imported: a driver of the cluster needs its token auth
    import ray

    from deployments.bench.command import machine
    from deployments.bench.runner import sample_questions
    from deployments.config import load_config_or_defaults
    from deployments.localcluster.app import _connect
    from deployments.reliability import chaos, faults
    from deployments.reliability.mix import Load, capacity

    run_dir = Path(args.run_dir)
    state = _up(args, run_dir) if args.up else ClusterState.load(run_dir)
    try:
        # The config the cluster was started with: --up writes it to the run dir; else --config.
        cfg = load_config_or_defaults(run_dir / "serve.yaml" if args.up else args.config)
        selected = faults.select(faults.matrix(cfg), args.faults)
        mix, questions = _mix(args), sample_questions()
        rate = args.rate
        if rate is None:
            rate = args.load_fraction * capacity(state.http_url, mix, questions, args.capacity_concurrency)
        print(f"offering {rate:.2f} requests/s", flush=True)
        extra = {"command": " ".join(["ragserve", *sys.argv[1:]]), "machine": machine(state.http_url),
                 "rate_rps": rate, "mix": dict(mix.weights), "max_tokens": mix.max_tokens,
                 "client_timeout_s": mix.client_timeout_s, "nodes": [n.name + ":" + "+".join(n.types or ["head"])
                                                                     for n in state.nodes]}
        _connect(state.address)
        timing = chaos.Timing(args.pre, args.settle, args.recovery_timeout)
        load = Load(state.http_url, mix, rate, questions).start()
        try:
            time.sleep(args.warmup)
            windows = chaos.run_faults(faults.Injector(state, args.milvus_down), load, selected, timing)
        finally:
            results = load.stop()
            ray.shutdown()
        rep = chaos.report(windows, results, extra)
    finally:
        if args.up:
            stop_cluster(ClusterState.load(run_dir))
    print("\n" + chaos.markdown(rep["faults"]))
    paths = chaos.write(Path(args.out), rep)
    print(f"\nwrote {', '.join(map(str, paths))}")
    broken = {r["fault"]: r["violations"] for r in rep["faults"] if r["violations"]}
    if broken:
        print(f"violations: {broken}", file=sys.stderr)
    return 1 if broken else 0


def engine_sequences(app_name: str = "ragserve") -> float:
    """Sequences the generator's vLLM engine holds (waiting + running), asked through its handle."""
    from ray import serve

    from deployments.autoscaling import GENERATOR_SEQUENCES

    handle = serve.get_deployment_handle("generator", app_name=app_name)
    return handle.record_autoscaling_stats.remote().result(timeout_s=30)[GENERATOR_SEQUENCES]


def cmd_soak(args: argparse.Namespace) -> int:
    """Start the stack of ``--config``, soak it, write soak.json/.md/_rss.png; exit 1 on a leak."""
    from deployments.bench.command import machine
    from deployments.bench.runner import sample_questions
    from deployments.reliability import soak
    from deployments.reliability.mix import capacity
    from deployments.stack import LocalStack, ensure_milvus

    stack = LocalStack.from_config_file(args.config)
    lite = ensure_milvus(stack.cfg)
    try:
        _ingest_sample(args.config)
        with stack:
            mix, questions = _mix(args), sample_questions()
            rate = args.rate or args.load_fraction * capacity(stack.url, mix, questions)
            print(f"soak: {args.duration:g}s at {rate:.2f} requests/s of {dict(mix.weights)}", flush=True)
            run = soak.run(stack.url, mix, rate, questions, args.duration, args.interval, args.warmup,
                           engine_sequences)
            extra = {"command": " ".join(["ragserve", *sys.argv[1:]]), "machine": machine(stack.url),
                     "rate_rps": rate, "mix": dict(mix.weights), "duration_s": args.duration,
                     "interval_s": args.interval}
    finally:
        if lite is not None:
            lite.stop()
    rep = soak.report(run, Bounds(args.rss_bound, args.rss_fraction, args.fd_bound), extra)
    print("\n" + soak.markdown(rep) + f"\n\nrequests: {rep['requests']}; engine sequences after the load: "
          f"{rep['engine_sequences_after_load']}")
    paths = soak.write(Path(args.out), rep)
    print(f"wrote {', '.join(map(str, paths))}")
    for v in rep["violations"]:
        print(f"violation: {v}", file=sys.stderr)
    return 1 if rep["violations"] else 0


def _ingest_sample(config: str | None) -> None:
    """The bundled sample corpus into the config's collection (a re-run writes nothing)."""
    from deployments.cli import sample_corpus

    cmd = [sys.executable, "-m", "deployments.cli", *(["--config", config] if config else []), "ingest",
           str(sample_corpus()), "--local", "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    print(done.stdout.strip() or done.stderr.strip()[-2000:])
    if done.returncode != 0:
        raise RuntimeError("ingesting the sample corpus failed")
