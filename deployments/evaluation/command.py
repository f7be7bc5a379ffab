"""``ragserve eval``: retrieval metrics per mode and a grounding check, against a server or a
local stack started for the run."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import httpx

from deployments.envs import env
from deployments.evaluation import conversational, dataset, runner


def _choices(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    """An argparse type for a comma-separated, non-empty list of ``allowed`` names."""
    def parse(value: str) -> list[str]:
        names = [m.strip() for m in value.split(",") if m.strip()]
        if not names or any(m not in allowed for m in names):
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)}; got {value!r}")
        return names
    return parse


def _flat(groups: list[list[str]]) -> tuple[str, ...]:
    """``--modes a,b c`` -> (a, b, c), first occurrence kept."""
    return tuple(dict.fromkeys(m for group in groups for m in group))


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``eval`` subcommand."""
    s = sub.add_parser("eval", help="retrieval quality (recall@k, MRR, nDCG@10, right above its near-duplicates) "
                       "and answer grounding")
    s.add_argument("--url", help="ragserve base URL; default: start the local stack (like `demo`) and "
                   "stop it after")
    s.add_argument("--api-key", default=None,
                   help="API key for a server with keys (default: $RAGSERVE_API_KEY); needs query, write and admin "
                   "scopes (it creates the collection and loads the passages)")
    s.add_argument("--collection", default="eval",
                   help="collection the passages are loaded into (created if absent)")
    s.add_argument("--data", type=Path, help="directory with passages.*.jsonl, questions.*.jsonl and "
                   "optionally conversations.*.jsonl (default: the bundled set)")
    s.add_argument("--modes", type=_choices(runner.MODES), nargs="+", default=[list(runner.MODES)],
                   help="retrieval modes to score, space- or comma-separated (default: all three)")
    s.add_argument("--condense", type=_choices(conversational.ROWS), nargs="+",
                   default=[list(conversational.ROWS)],
                   help="how the follow-up turn of each conversation is searched: the server's condense modes "
                   "last, join, rewrite, and reference (the set's hand-written standalone question); space- or "
                   "comma-separated (default: all four)")
    s.add_argument("--no-conversations", action="store_true",
                   help="skip the conversations (and do not read conversations.*.jsonl)")
    s.add_argument("--generate", type=int, default=20, metavar="N",
                   help="questions for the grounding check via /v1/query; 0 skips it")
    s.add_argument("--max-tokens", type=int, default=64, help="tokens per generated answer")
    s.add_argument("--top-k", type=int, default=10, help="passages retrieved per question")
    s.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    s.add_argument("--out", type=Path, default=Path("eval.json"), help="JSON report path")
    s.set_defaults(fn=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    """Validate the set, run it (questions, then conversations), print the tables and write the JSON.

    Exit status: 0 done, 1 a request failed (or the server was unreachable), 2 invalid set.
    """
    try:
        evalset = dataset.load(args.data, conversations=not args.no_conversations)
    except dataset.DatasetError as e:
        print(f"ragserve eval: {e}", file=sys.stderr)
        return 2
    condense = () if args.no_conversations else _flat(args.condense)
    if condense and not evalset.conversations:
        print(f"note: no conversations.*.jsonl in {evalset.directory}: no conversations scored", file=sys.stderr)
    opts = runner.EvalOptions(collection=args.collection, modes=_flat(args.modes), top_k=args.top_k,
                              generate=args.generate, max_tokens=args.max_tokens,
                              concurrency=args.concurrency, condense=condense,
                              api_key=args.api_key or env("RAGSERVE_API_KEY"))
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
