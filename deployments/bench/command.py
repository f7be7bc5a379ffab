"""``ragserve bench``: drive a running ragserve, optionally with same-run baselines."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from deployments.bench import baselines, encoders, load, overload, runner
from deployments.bench.stats import StepResult
from deployments.config import AppConfig, load_config_or_defaults


#: Concurrencies at which generation through Serve is compared with the bare engine.
GENERATION_BASELINE_CONCURRENCY = (1, 16)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``bench`` subcommand."""
    s = sub.add_parser("bench", help="load-test retrieval, generation, both, or embeddings")
    s.add_argument("--url", default="http://127.0.0.1:8000", help="ragserve base URL (loopback)")
    s.add_argument("--targets", default="retrieve,generate,query,embed",
                   help=f"comma-separated, of {','.join(load.TARGETS)}")
    s.add_argument("--mode", choices=("closed", "open", "overload", "encoder-backends"), default="closed",
                   help="overload: capacity (closed loop), then open loop at --multiples of it, with "
                   "rejections, Retry-After and the admitted p50/p99 against the budget (generation: "
                   "generator.ttft_budget_s; retrieval: ingress.retrieve_budget_s); "
                   "encoder-backends: every encoder.backend/precision against torch in this process (texts/s at "
                   "concurrency 1 and 32, agreement), with --serve through Serve and --eval their nDCG@10")
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
    s.add_argument("--out", default="reports/bench", help="directory for results.csv/json and the PNG plot")
    s.set_defaults(fn=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the steps, print the table, write the reports; exit 1 if any request failed."""
    cfg = load_config_or_defaults(args.config)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if args.mode == "overload":
        return cmd_overload(args, cfg, targets)
    if args.mode == "encoder-backends":
        return cmd_encoder_backends(args, cfg)
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
              f"({'whole latency of an admitted retrieval' if target == 'retrieve' else 'time to first token'})")
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
