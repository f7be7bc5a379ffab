"""``ragserve eval``: retrieval metrics per mode and a grounding check, against a server or a
local stack started for the run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import httpx

from deployments.evaluation import dataset, runner


def _modes(value: str) -> list[str]:
    modes = [m.strip() for m in value.split(",") if m.strip()]
    bad = [m for m in modes if m not in runner.MODES]
    if bad or not modes:
        raise argparse.ArgumentTypeError(f"modes are {', '.join(runner.MODES)}; got {value!r}")
    return modes


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``eval`` subcommand."""
    s = sub.add_parser("eval", help="retrieval quality (recall@k, MRR, nDCG@10) and answer grounding")
    s.add_argument("--url", help="ragserve base URL; default: start the local stack (like `demo`) and "
                   "stop it after")
    s.add_argument("--collection", default="eval",
                   help="collection the passages are loaded into (created if absent)")
    s.add_argument("--data", type=Path, help="directory with passages.*.jsonl and questions.*.jsonl "
                   "(default: the bundled set)")
    s.add_argument("--modes", type=_modes, nargs="+", default=[list(runner.MODES)],
                   help="retrieval modes to score, space- or comma-separated (default: all three)")
    s.add_argument("--generate", type=int, default=20, metavar="N",
                   help="questions for the grounding check via /v1/query; 0 skips it")
    s.add_argument("--max-tokens", type=int, default=64, help="tokens per generated answer")
    s.add_argument("--top-k", type=int, default=10, help="passages retrieved per question")
    s.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    s.add_argument("--out", type=Path, default=Path("eval.json"), help="JSON report path")
    s.set_defaults(fn=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    """Validate the set, run it, print the table and write the JSON.

    Exit status: 0 done, 1 a request failed (or the server was unreachable), 2 invalid set.
    """
    try:
        evalset = dataset.load(args.data)
    except dataset.DatasetError as e:
        print(f"ragserve eval: {e}", file=sys.stderr)
        return 2
    modes = tuple(dict.fromkeys(m for group in args.modes for m in group))
    opts = runner.EvalOptions(collection=args.collection, modes=modes, top_k=args.top_k,
                              generate=args.generate, max_tokens=args.max_tokens,
                              concurrency=args.concurrency)
    try:
        if args.url:
            report = runner.run_sync(args.url, evalset, opts)
        else:
            from deployments.stack import LocalStack

            with LocalStack.from_config_file(args.config) as st:
                print(f"app started in {st.timings['cold_start_s']:.1f}s on {st.url}")
                report = runner.run_sync(st.url, evalset, opts)
    except (runner.EvalError, httpx.HTTPError) as e:
        print(f"ragserve eval: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    load = report["load"]
    if load["rows"] is not None and load["rows"] != load["chunks"]:
        # Chunks of documents not in this set are retrieved too and count as misses.
        print(f"warning: '{args.collection}' holds {load['rows']} rows, the set {load['chunks']} chunks: "
              "drop the collection (DELETE /v1/collections/NAME) or use another --collection",
              file=sys.stderr)
    print(runner.format_table(report))
    print(f"\nwrote {runner.write_json(report, args.out)}")
    return 0
