"""``ragserve`` command line: serve, ingest, ask, status, config, demo, render, keys, bench, eval,
eval-injection, cluster, chaos, soak, tune.

Every command reads the one config (``--config``, else ``RAGSERVE_CONFIG``, else
``cluster/serve_config.yaml``, else the schema defaults).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import yaml

from deployments import localcluster
from deployments.bench import command as bench_command
from deployments.client import iter_sse
from deployments.config import AppConfig, load_config_or_defaults
from deployments.envs import env
from deployments.errors import RagServeError
from deployments import keys as keys_command
from deployments.evaluation import command as eval_command
from deployments.evaluation import injection as injection_command
from deployments.ingest import command as ingest_command
from deployments.ingest.command import cmd_ingest
from deployments.reliability import command as reliability_command
from deployments.render import command as render_command
from deployments.tune import command as tune_command
from deployments.stack import LocalStack

log = logging.getLogger("ragserve")


def sample_corpus() -> Path:
    """The small corpus bundled with the package (used by ``demo`` and the tests)."""
    return Path(str(resources.files("deployments") / "data" / "sample_corpus"))


# --------------------------------------------------------------------------- commands
def cmd_ask(args: argparse.Namespace) -> int:
    """Ask a running server; prints the answer as it streams, then its sources."""
    body = {"question": args.question, "stream": True}
    if args.top_k:
        body["top_k"] = args.top_k
    done: dict[str, Any] = {}
    sources: list[dict[str, Any]] = []
    with httpx.stream("POST", f"{args.url}/v1/query", json=body, timeout=args.timeout) as r:
        if r.status_code != 200:
            print(f"error {r.status_code}: {r.read().decode()}", file=sys.stderr)
            return 1
        for event, payload in iter_sse(r.iter_lines()):
            data = json.loads(payload)
            if event == "sources":
                sources = data["sources"]
            elif event == "error":
                print(f"\nerror: {data['error']['message']}", file=sys.stderr)
                return 1
            elif event == "done":
                done = data
            else:
                print(data["delta"], end="", flush=True)
    print("\n\nSources:")
    marks = set(done.get("cited", [])) | set(done.get("grounded_in", []))
    for s in sources:
        print(f"  {'*' if s['n'] in marks else ' '}[{s['n']}] {s['title']} ({s['source']})  score={s['score']:.4f}")
    print(f"cited by the model: {done.get('cited')}; answer drawn from: {done.get('grounded_in')}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Print the server's readiness report (exit 1 when not ready)."""
    try:
        r = httpx.get(f"{args.url}/readyz", timeout=10)
    except httpx.HTTPError as e:
        print(f"not reachable: {e}", file=sys.stderr)
        return 1
    print(json.dumps(r.json(), indent=2, ensure_ascii=False))
    return 0 if r.status_code == 200 else 1


def cmd_serve(args: argparse.Namespace) -> int:
    """Start Milvus Lite (if local), Ray and the app; serve until interrupted."""
    stack = LocalStack.from_config_file(args.config, ray_address=args.address)
    stop = threading.Event()
    with stack:
        # SIGTERM (service managers, `kill`) stops as cleanly as Ctrl-C, Ray and Milvus Lite
        # included. Installed after start: ray.init replaces the process's SIGTERM handler.
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        print(f"ragserve ready on {stack.url} (cold start {stack.timings['cold_start_s']:.1f}s); Ctrl-C stops it")
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
        print("stopping")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole path once: ingest the sample corpus, start everything, ask, stop."""
    args.paths, args.collection, args.local, args.verbose, args.quiet = [str(sample_corpus())], None, True, True, True
    args.address = args.via = None
    cmd_ingest(args)
    with LocalStack.from_config_file(args.config) as st:
        print(f"\napp started in {st.timings['cold_start_s']:.1f}s on {st.url}\n")
        args.url, args.top_k, args.timeout = st.url, None, 120
        for q in args.questions or DEMO_QUESTIONS:
            print(f"Q: {q}\nA: ", end="")
            args.question = q
            cmd_ask(args)
            print()
    return 0


DEMO_QUESTIONS = [
    "What is the maximum water pressure of the Verdant Loop irrigation pump?",
    "翠岚坪茶园位于海拔多少米？",
]


def cmd_config(args: argparse.Namespace) -> int:
    """Validate a config (exit 2 naming the bad field) or print the schema."""
    if args.schema:
        print(json.dumps(AppConfig.model_json_schema(), indent=2))
        return 0
    cfg = load_config_or_defaults(args.config)
    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return 0


# --------------------------------------------------------------------------- entry point
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ragserve", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="serve config YAML (default: $RAGSERVE_CONFIG or cluster/serve_config.yaml)")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="start Milvus Lite, Ray and the app")
    s.add_argument("--address", help="join an existing Ray cluster (default: start a local one)")
    s.set_defaults(fn=cmd_serve)
    ingest_command.add_parser(sub)
    for name, fn in (("ask", cmd_ask), ("status", cmd_status)):
        s = sub.add_parser(name, help=fn.__doc__.splitlines()[0])
        if name == "ask":
            s.add_argument("question")
            s.add_argument("--top-k", type=int)
            s.add_argument("--timeout", type=float, default=120)
        s.add_argument("--url", default="http://127.0.0.1:8000")
        s.set_defaults(fn=fn)
    s = sub.add_parser("demo", help="ingest the sample corpus, start, ask sample questions, stop")
    s.add_argument("questions", nargs="*")
    s.set_defaults(fn=cmd_demo)
    bench_command.add_parser(sub)
    bench_command.add_capacity_parser(sub)
    localcluster.add_parser(sub)
    reliability_command.add_parsers(sub)
    eval_command.add_parser(sub)
    injection_command.add_parser(sub)
    render_command.add_parser(sub)
    keys_command.add_parser(sub)
    tune_command.add_parser(sub)
    s = sub.add_parser("config", help="validate and print the config, or its schema")
    s.add_argument("--schema", action="store_true")
    s.set_defaults(fn=cmd_config)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=env("RAGSERVE_LOG_LEVEL") or "INFO", format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the output
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return args.fn(args)
    except RagServeError as e:
        print(f"ragserve: {e.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # vLLM spawns processes: keep the entry point guarded
    sys.exit(main())
