"""Scraping a running Ray with Prometheus: the service-discovery file and a concrete config.

The committed ``cluster/monitoring/prometheus.yml`` (rendered by ``ragserve render``) names Ray's
service-discovery file by a placeholder. The functions here are the live side: one writes that file
for a Ray started without its dashboard (a Ray call), the other a Prometheus config for a real
file, loading the rule files of a checkout by absolute path (``ragserve render --prometheus-config``).
"""

from __future__ import annotations

import json
from pathlib import Path

from deployments.render import monitoring


def write_prometheus_config(path: Path, sd_file: Path, root: Path, listen_address: str = "127.0.0.1:9090",
                            scrape_interval: str = "15s") -> Path:
    """Write a config scraping the nodes in ``sd_file`` with the rule files under ``root``.

    Args:
        path: where the config goes.
        sd_file: Ray's ``prom_metrics_service_discovery.json``.
        root: the repository root holding ``cluster/monitoring/rules/``.
        listen_address: this Prometheus' ``--web.listen-address`` (scraped as job ``prometheus``).
        scrape_interval: scrape and rule-evaluation interval, e.g. ``15s``.
    """
    rules = [str((root / monitoring.OUT_DIR / f).resolve()) for f in monitoring.RULE_FILES]
    cfg = monitoring.prometheus_config(str(sd_file), listen_address, scrape_interval, rules)
    path.write_text(monitoring.yaml_text(cfg, f"Rendered for {sd_file}"), encoding="utf-8")
    return path


def write_service_discovery(path: Path) -> Path:
    """Write Ray's file_sd content for the connected cluster (as Ray's dashboard does).

    Ray's dashboard keeps ``<session dir>/prom_metrics_service_discovery.json`` current; a Ray
    started without the dashboard (``LocalStack`` does) writes none, so this writes the same content.
    """
    import ray
    from ray._common.network_utils import build_address

    nodes = [n for n in ray.nodes() if n["alive"]]
    targets = [build_address(n["NodeManagerAddress"], n["MetricsExportPort"]) for n in nodes]
    path.write_text(json.dumps([{"labels": {"job": "ray"}, "targets": targets}]), encoding="utf-8")
    return path
