"""The monitoring artifacts: generated from SPECS, current, valid for promtool, naming real series."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from deployments import stages
from deployments.metrics import SPECS, MetricSpec
from deployments.render import monitoring, stale_files

ROOT = Path(__file__).resolve().parents[2]
MON = ROOT / "cluster" / "monitoring"
RULE_FILES = [MON / "rules" / "recording.yml", MON / "rules" / "alerts.yml"]
DASHBOARD = MON / "grafana" / "ragserve-dashboard.json"
# Words in PromQL that look like series names but are operators or modifiers.
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def _rules() -> list[dict]:
    return [r for f in RULE_FILES for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"]]


def _panels() -> list[dict]:
    return json.loads(DASHBOARD.read_text())["panels"]


def _exprs() -> list[str]:
    return [r["expr"] for r in _rules()] + [t["expr"] for p in _panels() for t in p.get("targets", [])]


def series_names(expr: str) -> set[str]:
    """Series names a PromQL expression selects (good enough for the expressions generated here)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range and subquery windows
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = re.findall(r"(?<![\w.$])([a-zA-Z_:][\w:]*)\b(?!\s*\()", expr)
    return {n for n in names if n.lower() not in PROMQL_WORDS}


def test_series_names_extractor() -> None:
    expr = ('histogram_quantile(0.5, sum by (le, stage) (rate(ray_a_bucket{stage=~"x|y"}[$__rate_interval]))) '
            "/ on (stage) b:c:d > 1e-3 and deriv(ray_e[5m:]) > 0 or 0 * max by (x) (ray_f)")
    assert series_names(expr) == {"ray_a_bucket", "b:c:d", "ray_e", "ray_f"}


def test_generation_is_deterministic() -> None:
    first, second = monitoring.generate(ROOT), monitoring.generate(ROOT)
    assert first == second
    assert set(first) == {str(p.relative_to(ROOT)) for p in [MON / "prometheus.yml", DASHBOARD, *RULE_FILES]}


def test_committed_files_are_current() -> None:
    stale = stale_files(monitoring.generate(ROOT), ROOT)
    assert not stale, f"stale: {stale}; run `ragserve render`"


def test_check_names_the_stale_file(tmp_path: Path) -> None:
    files = monitoring.generate(ROOT)
    assert set(stale_files(files, tmp_path)) == set(files)  # nothing written yet
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert stale_files(files, tmp_path) == []
    alerts = "cluster/monitoring/rules/alerts.yml"
    (tmp_path / alerts).write_text(files[alerts] + "# hand edit\n")
    assert stale_files(files, tmp_path) == [alerts]


def test_exported_names_follow_ray() -> None:
    # Seen on a live scrape: a counter already ending in _total keeps its name, others gain _total.
    assert monitoring.exported_names(MetricSpec("rag_x_total", "counter", "")) == ("ray_rag_x_total",)
    assert monitoring.exported_names(MetricSpec("rag_x", "counter", "")) == ("ray_rag_x_total",)
    assert monitoring.exported_names(MetricSpec("rag_x_seconds", "histogram", "")) == (
        "ray_rag_x_seconds_bucket", "ray_rag_x_seconds_sum", "ray_rag_x_seconds_count")
    assert monitoring.series("rag_stage_latency_seconds", "bucket") == "ray_rag_stage_latency_seconds_bucket"
    with pytest.raises(KeyError):
        monitoring.series("rag_no_such_metric")
    with pytest.raises(KeyError):
        monitoring.series("rag_stage_latency_seconds")  # which part?
    with pytest.raises(KeyError):
        monitoring.external("ray_serve_made_up")


def test_every_expression_names_only_known_series() -> None:
    recorded = {r["record"] for r in _rules() if "record" in r}
    allowed = monitoring.known_series() | recorded
    for expr in _exprs():
        unknown = series_names(expr) - allowed
        assert not unknown, f"{expr!r} names {unknown}: not derivable from SPECS nor in monitoring.EXTERNAL"


def test_every_spec_is_on_the_dashboard() -> None:
    used = set().union(*(series_names(t["expr"]) for p in _panels() for t in p.get("targets", [])))
    missing = [s.name for s in SPECS if not set(monitoring.exported_names(s)) & used]
    assert not missing, f"metrics without a panel: {missing}"


def test_dashboard_structure() -> None:
    dash = json.loads(DASHBOARD.read_text())
    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    assert {v["name"] for v in dash["templating"]["list"]} == {"datasource"}
    rows = [p["title"] for p in panels if p["type"] == "row"]
    assert [f"stage: {s.name}" for s in stages.STAGES] == rows[: len(stages.STAGES)]
    for p in panels:
        assert 0 <= p["gridPos"]["x"] and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        if p["type"] == "row":
            continue
        refs = [t["refId"] for t in p["targets"]]
        assert p["targets"] and len(refs) == len(set(refs)), p["title"]
        assert all(t["expr"].strip() and t["datasource"] == p["datasource"] for t in p["targets"]), p["title"]
    for s in stages.STAGES:
        titles = {p["title"] for p in panels}
        assert {f"{s.name}: {k}" for k in ("latency", "throughput", "errors", "replicas")} <= titles


def test_stages_are_the_stage_labels_the_code_records() -> None:
    used = set()
    for f in (ROOT / "deployments").rglob("*.py"):
        used |= set(re.findall(r'stage_call\("(\w+)"\)', f.read_text(encoding="utf-8")))
    assert used == {s.name for s in stages.STAGES}


def test_every_stage_has_its_latency_alert_at_its_threshold() -> None:
    alerts = {r["alert"]: r["expr"] for r in _rules() if "alert" in r}
    for s in stages.STAGES:  # optional stages too (rerank): an alert on an absent series never fires
        expr = alerts[f"RagStageLatencyP99High{s.name.title()}"]
        assert expr == f'stage:rag_stage_latency_seconds:p99{{stage="{s.name}"}} > {s.p99_alert_s:g}'


def _source(package: str, relative: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        pytest.skip(f"{package} is not installed")
    return (Path(spec.origin).parent / relative).read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(monitoring.EXTERNAL))
def test_external_series_exist_in_their_sources(name: str) -> None:
    kind = monitoring.EXTERNAL[name]
    base = re.sub(r"_(bucket|total)$", "", name) if kind in ("histogram", "counter") else name
    if name.startswith("ray_vllm_"):
        text = _source("vllm", "v1/metrics/loggers.py")
        assert f'name="vllm:{base.removeprefix("ray_vllm_")}"' in text
    else:
        assert name.startswith("ray_serve_")
        text = _source("ray", "serve/_private/deployment_state.py") + _source(
            "ray", "serve/_private/autoscaling_state.py")
        assert f'"{base.removeprefix("ray_")}"' in text


def _promtool(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (Debian/Ubuntu: apt-get install prometheus)")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)


def test_promtool_checks_rules() -> None:
    res = _promtool("check", "rules", *map(str, RULE_FILES))
    assert res.returncode == 0, res.stdout + res.stderr


def test_promtool_checks_rendered_config(tmp_path: Path) -> None:
    sd = tmp_path / monitoring.SD_FILE_NAME
    sd.write_text(json.dumps([{"labels": {"job": "ray"}, "targets": ["127.0.0.1:1"]}]))
    out = tmp_path / "prometheus.yml"
    from deployments.cli import main

    assert main(["render", "--root", str(ROOT), "--prometheus-config", str(out), "--sd-file", str(sd),
                 "--scrape-interval", "1s"]) == 0
    cfg = yaml.safe_load(out.read_text())
    assert cfg["scrape_configs"][0]["file_sd_configs"] == [{"files": [str(sd)]}]
    assert all(Path(f).is_absolute() and Path(f).is_file() for f in cfg["rule_files"])
    res = _promtool("check", "config", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    # The committed config (placeholder sd path, rule files relative to it) is valid too.
    res = _promtool("check", "config", str(MON / "prometheus.yml"))
    assert res.returncode == 0, res.stdout + res.stderr
