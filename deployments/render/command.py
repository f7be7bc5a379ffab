"""``ragserve render``: write (or ``--check``) every generated file of a checkout."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deployments.errors import ConfigError
from deployments.render import render
from deployments.render.capacity import CapacityError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``render`` subcommand."""
    s = sub.add_parser("render", help="render the monitoring files and k8s manifests from their sources")
    s.add_argument("--check", action="store_true", help="write nothing; exit 1 naming each stale file")
    s.add_argument("--root", type=Path, default=Path("."),
                   help="the repository root the files are read from and written to (default: .)")
    s.add_argument("--prometheus-config", type=Path, metavar="OUT",
                   help="instead: write a concrete Prometheus config for --sd-file, loading the rule files "
                   "under --root")
    s.add_argument("--sd-file", type=Path, help="Ray's prom_metrics_service_discovery.json (with --prometheus-config)")
    s.add_argument("--listen", default="127.0.0.1:9090", help="that Prometheus' --web.listen-address")
    s.add_argument("--scrape-interval", default="15s")
    s.set_defaults(fn=cmd_render)


def cmd_render(args: argparse.Namespace) -> int:
    """Render under ``--root``; 1 if ``--check`` found stale files, 2 if the sources are invalid."""
    root = args.root.resolve()
    if not (root / "cluster" / "serve_config.yaml").is_file():
        print(f"ragserve render: {root} is not a ragserve checkout (no cluster/serve_config.yaml)", file=sys.stderr)
        return 2
    if args.prometheus_config:
        from deployments.scrape import write_prometheus_config

        if not args.sd_file:
            print("ragserve render: --prometheus-config needs --sd-file", file=sys.stderr)
            return 2
        write_prometheus_config(args.prometheus_config, args.sd_file.resolve(), root, args.listen,
                                args.scrape_interval)
        return 0
    try:
        return render(root, check=args.check)
    except (ConfigError, CapacityError) as e:
        print(f"ragserve render: {getattr(e, 'message', e)}", file=sys.stderr)
        return 2
