"""``ragserve bench``: drive a running ragserve, optionally with same-run baselines."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from deployments.bench import baselines, encoders, load, overload, runner
from deployments.bench import capacity
from deployments.bench import ingest as ingest_bench
from deployments.bench.stats import StepResult
from deployments.config import AppConfig, load_config_or_defaults


#: Concurrencies at which generation through Serve is compared with the bare engine.
GENERATION_BASELINE_CONCURRENCY = (1, 16)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``bench`` subcommand."""
    s = sub.add_parser("bench", help="load-test retrieval, generation, both, or embeddings")
    s.add_argument("--url", default="http://127.0.0.1:8000", help="ragserve base URL (loopback)")
    s.add_argument("--targets", default="retrieve,generate,query,embed",
                   help=f"comma-separated, of {','.join(load.TARGETS)}, or {load.MIX}<share>: that share of "
                   "retrievals, the rest RAG queries")
    s.add_argument("--mode", choices=("closed", "open", "overload", "encoder-backends", "ingest"), default="closed",
                   help="overload: capacity (closed loop), then open loop at --multiples of it, with "
                   "rejections, Retry-After and the admitted p50/p99 against the budget (generation: "
                   "generator.ttft_budget_s; retrieval: ingress.retrieve_budget_s); "
                   "encoder-backends: every encoder.backend/precision against torch in this process (texts/s at "
                   "concurrency 1 and 32, agreement), with --serve through Serve and --eval their nDCG@10; "
                   "ingest: `ragserve ingest` of generated corpora (--sizes) next to the running server, each way "
                   "(--ways: its API, its Ray cluster, a Ray of its own)")
    s.add_argument("--concurrency", help="closed loop: concurrency sweep (default 1,2,4,8,16,32); overload: the "
                   "closed loops whose best rate is the capacity (default 4,8,16)")
    s.add_argument("--multiples", default="1,2,4", help="overload: offered rates as multiples of the capacity")
    s.add_argument("--rates", default="1,2,4,8", help="open loop: Poisson arrival rates (requests/s)")
    s.add_argument("--duration", type=float, default=10.0, help="seconds per step (upper bound)")
    s.add_argument("--max-requests", type=int, default=1000, help="requests per step (upper bound)")
    s.add_argument("--max-tokens", type=int, default=32, help="tokens per generation")
    s.add_argument("--settle", type=float, default=11.0,
                   help="seconds to wait before reading metrics back (Ray exports them every ~10 s); 0 skips")
    s.add_argument("--metrics-url", action="append", help="Ray metrics endpoint(s); default: from the Ray session")
    s.add_argument("--baselines", nargs="?", const="a,b,c", default="",
                   help="also measure baselines: a=in-process retrieval, b=bare vLLM (streamed and collected "
                   "generation), c=unbatched encoder (default a,b,c; they need the app's Ray cluster and Milvus on "
                   "this machine); r=retrieval cache (retrieve_cached vs retrieve at 1 and 16); p=prefix caching on "
                   "the bare engine (no app needed: --targets '')")
    s.add_argument("--backends", default=",".join(encoders.VARIANTS),
                   help="encoder-backends: backend/precision pairs (or backend names) to compare with torch/fp32")
    s.add_argument("--rounds", type=int, default=5, help="encoder-backends: rounds in which every backend takes a turn")
    s.add_argument("--serve", action="store_true",
                   help="encoder-backends: also through Serve (needs a running ragserve Ray cluster on this machine)")
    s.add_argument("--eval", action="store_true",
                   help="encoder-backends: also nDCG@10 per backend (starts a local stack per backend; minutes each)")
    s.add_argument("--sizes", default="24,2000", help="ingest: documents per generated corpus")
    s.add_argument("--ways", default=",".join(ingest_bench.WAYS), help="ingest: of " + ",".join(ingest_bench.WAYS))
    s.add_argument("--out", default="reports/bench", help="directory for results.csv/json and the PNG plot")
    s.set_defaults(fn=cmd_bench)


def add_capacity_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``capacity`` subcommand."""
    s = sub.add_parser("capacity", help="replicas per stage and worker groups for a target load, from a bench report")
    s.add_argument("--report", required=True, help="results.json of a closed-loop `ragserve bench` with the "
                   "targets retrieve, embed, generate and query, measured on the hardware to size")
    s.add_argument("--qps", type=float, help="target requests/s (default: only the configured replicas' capacity)")
    s.add_argument("--answer-tokens", type=float,
                   help="tokens per generated answer (default: as many as the report's queries answered with)")
    s.add_argument("--retrieval-share", type=float, default=0.0,
                   help="share of the requests that are retrieval only (/v1/retrieve); the rest are RAG queries")
    s.add_argument("--utilisation", type=float, default=0.7, help="busy share each replica is sized for (headroom)")
    s.add_argument("--overlay", help="k8s overlay (cluster/serve_config.*.yaml) whose pods to size; default: CPU "
                   "pods of --cpu-pod-cpus for the --config's stages")
    s.add_argument("--cpu-pod-cpus", type=int, default=8, help="CPUs of a CPU worker pod (without --overlay)")
    s.add_argument("--out", help="also write the numbers as JSON to this file")
    s.set_defaults(fn=cmd_capacity)


def cmd_capacity(args: argparse.Namespace) -> int:
    """Print the measured costs, the configured replicas' capacity and, for ``--qps``, the replicas
    per stage and the worker groups they take."""
    from deployments.errors import ConfigError
    from deployments.render.capacity import plan_groups
    from deployments.render.overlay import merged_serve_config

    if not 0 <= args.retrieval_share <= 1 or not 0 < args.utilisation <= 1:
        raise ConfigError("--retrieval-share must be within [0, 1] and --utilisation within (0, 1]")
    report = json.loads(Path(args.report).read_text())
    cfg, overlay = load_config_or_defaults(args.config), None
    if args.overlay:
        _, cfg, overlay = merged_serve_config(Path(args.overlay), Path.cwd())
    costs = capacity.costs_from_report(report, cfg)
    args.answer_tokens = args.answer_tokens or round(costs.query_tokens, 1)
    facts = (report.get("machine") or {}).get("facts") or {}
    print(f"report: {args.report} ({facts.get('cpu_model', 'machine unknown')}, "
          f"{len(facts.get('allowed_cpus') or []) or '?'} CPUs)\n" + capacity.format_costs(costs, args.answer_tokens))
    cap, limit = capacity.predicted(costs, cfg, args.answer_tokens, args.retrieval_share)
    per_stage, stage = capacity.stage_capacity(costs, cfg, args.answer_tokens, args.retrieval_share)
    print(f"\nthe configured replicas carry {per_stage:.2f} requests/s with a stage on its own CPUs (limited by "
          f"{stage}); on the measured machine {cap:.2f} requests/s (limited by {limit})")
    result: dict = {"report": args.report, "answer_tokens": args.answer_tokens, "retrieval_share": args.retrieval_share,
                    "costs": {c.stage: asdict(c) for c in [*costs.stages.values(), costs.generator(args.answer_tokens)]},
                    "capacity": {"per_stage": per_stage, "per_stage_limit": stage, "machine": cap, "machine_limit": limit}}
    if args.qps is not None:
        target = capacity.Target(args.qps, args.answer_tokens, args.retrieval_share, args.utilisation)
        rows = capacity.needs(costs, target, cfg)
        print("\n" + capacity.format_needs(rows, target))
        gpu = (overlay.kubernetes.gpu_workers.gpus, overlay.kubernetes.gpu_workers.cpus) \
            if overlay and overlay.kubernetes.gpu_workers else None
        pods = overlay.kubernetes.cpu_workers.cpus if overlay else args.cpu_pod_cpus
        plan = plan_groups(capacity.sized(cfg, {n.stage: n.replicas for n in rows}), pods, gpu)
        print("\nworker groups: " + "; ".join(f"{g}: {size.min_pods} pod{'s' if size.min_pods != 1 else ''} of "
                                             f"{cpus} CPUs" for g, (size, cpus) in plan.items()))
        result.update(target=asdict(target), replicas={n.stage: {**asdict(n), "replicas": n.replicas, "throughput": n.throughput
                                                 if n.throughput != float("inf") else None} for n in rows},
                      groups={g: {"pods": size.min_pods, "cpus": cpus} for g, (size, cpus) in plan.items()})
    if args.out:
        Path(args.out).write_text(json.dumps(runner.no_nan(result), indent=2, default=str))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the steps, print the table, write the reports; exit 1 if any request failed."""
    cfg = load_config_or_defaults(args.config)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if args.mode == "overload":
        return cmd_overload(args, cfg, targets)
    if args.mode == "encoder-backends":
        return cmd_encoder_backends(args, cfg)
    if args.mode == "ingest":
        return cmd_ingest_bench(args)
    args.concurrency = args.concurrency or "1,2,4,8,16,32"
    loads = [float(x) for x in (args.concurrency if args.mode == "closed" else args.rates).split(",")]
    metrics = args.metrics_url or ([] if args.settle <= 0 else runner.metrics_urls())
    extra: dict = {"machine": machine(args.url)}
    print(runner.HEADER)
    results = runner.run_steps(args.url, targets, args.mode, loads, args.duration, args.max_requests,
                               args.max_tokens, metrics, args.settle)
    if args.baselines:
        extra["baselines"] = run_baselines(args, cfg, results)
    if not results:
        return 0
    paths = runner.write_report(results, Path(args.out), extra)
    print(f"\nwrote {', '.join(str(p) for p in paths.values())}")
    return 1 if any(r.errors for r in results) else 0


def cmd_overload(args: argparse.Namespace, cfg: AppConfig, targets: list[str]) -> int:
    """``--mode overload``: print the table and write ``overload.json``; exit 1 when an admitted
    p99 is over the budget, or a rejection lacks Retry-After or the error shape."""
    budgets = overload.budgets(cfg)
    extra = {"machine": machine(args.url), "budgets_s": budgets, "command": " ".join(["ragserve", *sys.argv[1:]])}
    for target in targets:
        print(f"budget of {target}: {overload.BUDGET_FIELDS[target]} = {budgets[target]:g}s "
              f"({'whole latency of an admitted retrieval' if overload.is_retrieval(target) else 'time to first token'})")
    concurrencies = [int(x) for x in (args.concurrency or "4,8,16").split(",")]
    multiples = [float(x) for x in args.multiples.split(",")]
    print(overload.HEADER)
    results = overload.run(args.url, targets, multiples, concurrencies, args.duration, args.max_requests,
                           args.max_tokens, budgets, runner.sample_questions())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "overload.json"
    path.write_text(json.dumps(runner.no_nan({"targets": results, **extra}), indent=2, allow_nan=False))
    print(f"\nwrote {path}")
    steps = [s for t in results for s in t.get("steps", ())]
    bad = [s for s in steps if s["within_budget"] is False or s["rejected_with_retry_after"] < sum(s["rejected"].values())
           or s["rejected_in_error_shape"] < sum(s["rejected"].values())]
    return 1 if bad else 0


def cmd_encoder_backends(args: argparse.Namespace, cfg: AppConfig) -> int:
    """``--mode encoder-backends``: print the table and write ``encoder_backends.json``; exit 1 when
    a backend lost more than ``encoders.NDCG_TOLERANCE`` nDCG@10 against torch (with --eval)."""
    from deployments.generator.hardware import HardwareFacts

    variants = encoders.parse_variants(args.backends)
    facts = HardwareFacts.detect().model_dump(mode="json")
    print(f"machine: {facts['cpu_model']}, {len(facts['allowed_cpus'])} CPUs, flags {','.join(facts['cpu_flags'])}")
    questions = runner.sample_questions()
    results: dict = {"command": " ".join(["ragserve", *sys.argv[1:]]), "machine": facts, "variants": variants}
    results["inprocess"] = encoders.inprocess(cfg, variants, questions, encoders.passages(64), args.rounds)
    if args.serve:
        results["serve"] = encoders.through_serve(cfg, variants, questions, n=640)
    if args.eval:
        results["quality"] = encoders.quality(cfg, variants)
    print("\n" + encoders.format_table(results))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "encoder_backends.json"
    path.write_text(json.dumps(runner.no_nan(results), indent=2, allow_nan=False))
    print(f"\nwrote {path}")
    return 1 if any(not q["within_tolerance"] for q in results.get("quality", {}).values()) else 0


def cmd_ingest_bench(args: argparse.Namespace) -> int:
    """``--mode ingest``: print the table and write ``ingest.json``; exit 1 when a run failed or did
    not add every document."""
    extra = {"machine": machine(args.url), "command": " ".join(["ragserve", *sys.argv[1:]])}
    print(ingest_bench.HEADER)
    rows = ingest_bench.run(args.url, args.config, [int(x) for x in args.sizes.split(",")],
                            [w.strip() for w in args.ways.split(",") if w.strip()])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "ingest.json"
    path.write_text(json.dumps({"runs": rows, **extra}, indent=2))
    print(f"\nwrote {path}")
    return 1 if any(r["exit"] or r.get("added") != r["documents"] for r in rows) else 0


def machine(url: str) -> dict:
    """What every report records: this machine's CPU (model, relevant flags, cores) and the
    engine settings the running app resolved (from its /readyz)."""
    import httpx

    from deployments.generator.hardware import HardwareFacts

    out: dict = {"facts": HardwareFacts.detect().model_dump(mode="json")}
    try:
        out["app_generator"] = httpx.get(f"{url}/readyz", timeout=10).json()["stages"]["generator"]
    except (httpx.HTTPError, KeyError, ValueError) as e:
        out["app_generator"] = {"error": str(e)}
    f = out["facts"]
    print(f"machine: {f['cpu_model']}, {len(f['allowed_cpus'])} CPUs, flags {','.join(f['cpu_flags'])}; "
          f"gpu {f['gpu']}; app engine {out['app_generator'].get('engine', {}).get('dtype')}")
    return out


def _step(args, target: str, concurrency: int, results: list[StepResult]) -> StepResult:
    for r in results:
        if r.target == target and r.mode == "closed" and r.load == concurrency:
            return r
    r = runner.run_steps(args.url, [target], "closed", [concurrency], args.duration, args.max_requests,
                         args.max_tokens)[0]
    results.append(r)
    return r


def run_baselines(args: argparse.Namespace, cfg: AppConfig, results: list[StepResult]) -> dict:
    """(a) Serve vs in-process retrieval at c=1, (b) Serve vs bare vLLM at c=1 and c=16,
    (c) batched vs unbatched encoder at c=32, (r) the retrieval cache's gain on repeated questions,
    (p) prefix caching on the bare engine. Printed and returned for the JSON report."""
    questions = runner.sample_questions()
    which = set(args.baselines.split(","))
    out: dict = {}
    if "a" in which:
        out["a_retrieve_c1"] = _retrieval_baseline(args, cfg, questions, results)
    if "b" in which:
        out.update(_generation_baseline(args, cfg, questions, results))
    if "c" in which:
        out["c_encoder_c32"] = baselines.encoder_batching(cfg, questions, concurrency=32, n=640)
    if "r" in which:
        out.update(_cache_gain(args, results))
    if "p" in which:
        out["p_prefix_caching"] = baselines.prefix_caching(cfg)
    print("\nbaselines:\n" + json.dumps(out, indent=2))
    return out


def _retrieval_baseline(args, cfg: AppConfig, questions: list[str], results: list[StepResult]) -> dict:
    served = _step(args, "retrieve", 1, results)
    inproc = baselines.inprocess_retrieval(cfg, questions, n=50)
    return {"serve_p50_ms": served.p50_ms, "inprocess_p50_ms": inproc["p50_ms"],
            "serve_adds_ms": served.p50_ms - inproc["p50_ms"]}


def _generation_baseline(args, cfg: AppConfig, questions: list[str], results: list[StepResult]) -> dict:
    served = {c: _step(args, "generate", c, results) for c in GENERATION_BASELINE_CONCURRENCY}
    collected = {c: _step(args, "generate_collected", c, results) for c in GENERATION_BASELINE_CONCURRENCY}
    bare = baselines.bare_vllm(cfg, questions, {c: max(2 * c, int(s.requests)) for c, s in served.items()},
                               max_tokens=args.max_tokens)
    out: dict = {"b_bare_engine": bare["engine"]}
    for c, s in served.items():
        b = bare["steps"][c]
        out[f"b_generate_c{c}"] = {
            "serve_tokens_per_s": s.tokens_per_s, "bare_tokens_per_s": b["tokens_per_s"],
            "throughput_ratio": s.tokens_per_s / b["tokens_per_s"],
            "serve_ttft_p50_ms": s.ttft_p50_ms, "bare_ttft_p50_ms": b["ttft_p50_ms"],
            "ttft_overhead_ms": s.ttft_p50_ms - b["ttft_p50_ms"],
            "collected_tokens_per_s": collected[c].tokens_per_s,
            "collected_throughput_ratio": collected[c].tokens_per_s / b["tokens_per_s"]}
    return out


def _cache_gain(args, results: list[StepResult]) -> dict:
    """Requests/s of ``retrieve_cached`` over ``retrieve`` (the same repeated questions, one
    through the retrieval cache, one past it) at concurrency 1 and 16."""
    out = {}
    for c in GENERATION_BASELINE_CONCURRENCY:
        fresh, cached = _step(args, "retrieve", c, results), _step(args, "retrieve_cached", c, results)
        out[f"r_cache_c{c}"] = {"uncached_rps": fresh.throughput_rps, "cached_rps": cached.throughput_rps,
                                "gain": cached.throughput_rps / fresh.throughput_rps,
                                "uncached_p50_ms": fresh.p50_ms, "cached_p50_ms": cached.p50_ms}
    return out
