"""A real Prometheus scrapes the running app through Ray's service discovery.

Prometheus (the Debian binary) is started on 127.0.0.1 with a config rendered by
``deployments.scrape`` (1 s scrapes, the generated recording and alert rules), a short load
goes through the app, and the per-stage quantiles, the recording rules, vLLM's engine metrics and
every dashboard panel's PromQL are queried back over Prometheus' HTTP API.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from deployments import scrape, stages
from deployments.config import load_config
from deployments.render import monitoring

pytestmark = pytest.mark.integration
PROMETHEUS = Path("/usr/bin/prometheus")
ROOT = Path(__file__).resolve().parents[2]
#: The stages the shipped config deploys (the dashboard also has rows for optional ones left off).
STAGES = {s.name for s in stages.enabled(load_config(ROOT / "cluster" / "serve_config.yaml"), stages.STAGES)}
WAIT_S = 60.0  # every wait is bounded: Ray reports metrics every few seconds, Prometheus scrapes every 1 s
ROUTES = ("/v1/retrieve", "/v1/query", "/v1/embeddings")
#: Every series the test later takes a rate of, with the label values it must carry. A series is
#: born with its current count and rate() needs an increase between scrapes, so the measured load
#: is sent only once all of them exist (each replica reports to Ray on its own schedule).
BORN = [
    ("count by (stage) (ray_rag_stage_latency_seconds_bucket)", "stage", set(STAGES)),
    ("count by (route) (ray_rag_ingress_latency_seconds_bucket)", "route", set(ROUTES)),
    ("count(ray_rag_generator_ttft_seconds_bucket)", "", {""}),
    ("count(ray_rag_encoder_batch_size_bucket)", "", {""}),
    ("count(ray_vllm_generation_tokens_total)", "", {""}),
    ("count(ray_vllm_time_to_first_token_seconds_count)", "", {""}),
]


@dataclass
class Prometheus:
    client: httpx.Client
    log: Path

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (the query must be valid)."""
        body = self.client.get("/api/v1/query", params={"query": expr}).json()
        assert body["status"] == "success", f"{expr}: {body}"
        return body["data"]["result"]

    def values(self, expr: str, label: str) -> dict[str, float]:
        """``label`` value → sample value, finite samples only (NaN: no rate yet)."""
        out = {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(expr)}
        return {k: v for k, v in out.items() if math.isfinite(v)}

    def covering(self, expr: str, label: str, wanted: set[str]) -> dict[str, float] | None:
        """:meth:`values` when they cover every ``wanted`` label value, else None."""
        values = self.values(expr, label)
        return values if wanted <= set(values) else None

    def wait_covering(self, expr: str, label: str, wanted: set[str]) -> dict[str, float]:
        """Wait until ``expr`` has a finite value for every ``wanted`` value of ``label``."""
        def what() -> str:
            return f"{expr} for each {label} of {sorted(wanted)} (has {self.values(expr, label)})"

        return self.wait(what, lambda: self.covering(expr, label, wanted))

    def wait(self, what: str | Callable[[], str], check: Callable[[], Any]) -> Any:
        """Poll ``check`` until it returns something truthy, at most :data:`WAIT_S`.

        ``what`` describes the awaited state for the failure message (a callable: evaluated then).
        """
        deadline, last = time.monotonic() + WAIT_S, None
        while time.monotonic() < deadline:
            last = check()
            if last:
                return last
            time.sleep(1)
        tail = self.log.read_text(errors="replace")[-2000:]
        try:
            targets = self.client.get("/api/v1/targets").json()["data"]["activeTargets"]
            health: Any = [(t["scrapeUrl"], t["health"], t["lastError"]) for t in targets]
        except httpx.HTTPError as e:
            health = f"unknown ({e!r})"
        what = what() if callable(what) else what
        pytest.fail(f"after {WAIT_S:.0f}s, {what}: last {last!r}; targets {health}; prometheus log: {tail}")


@pytest.fixture(scope="module")
def prometheus(stack: Any, tmp_path_factory: pytest.TempPathFactory, free_port) -> Iterator[Prometheus]:
    """Prometheus on a free loopback port, scraping the stack's Ray; stopped by its own pid."""
    if not PROMETHEUS.exists():
        pytest.skip(f"{PROMETHEUS} is absent (Debian/Ubuntu: apt-get install prometheus)")
    import ray

    tmp = tmp_path_factory.mktemp("prometheus")
    # Private but stable: the driver's node knows its session dir (no public API in Ray 2.60).
    session_dir = Path(ray._private.worker._global_node.get_session_dir_path())
    sd_file = session_dir / monitoring.SD_FILE_NAME
    if not sd_file.exists():
        # Ray's dashboard keeps that file current; LocalStack starts Ray without the dashboard.
        sd_file = scrape.write_service_discovery(tmp / monitoring.SD_FILE_NAME)
    port = free_port()
    config = scrape.write_prometheus_config(tmp / "prometheus.yml", sd_file, ROOT, f"127.0.0.1:{port}", "1s")
    log = tmp / "prometheus.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(PROMETHEUS), f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            prom = Prometheus(client, log)
            prom.wait("Prometheus ready", lambda: _ready(client, proc))
            yield prom
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def _ready(client: httpx.Client, proc: subprocess.Popen) -> bool:
    assert proc.poll() is None, f"prometheus exited with {proc.returncode}"
    try:
        return client.get("/-/ready").status_code == 200
    except httpx.TransportError:
        return False


def _load(client: httpx.Client, retrieve: int, query: int, embeddings: int) -> None:
    for i in range(retrieve):
        r = client.post("/v1/retrieve", json={"question": f"What does error code E-44{i:02d} mean?"})
        assert r.status_code == 200, r.text
    for _ in range(query):
        question = "How much is a metro fare in Lancheng?"
        r = client.post("/v1/query", json={"question": question, "max_tokens": 8})
        assert r.status_code == 200, r.text
    for i in range(embeddings):
        r = client.post("/v1/embeddings", json={"input": [f"passage {i}", "another passage"]})
        assert r.status_code == 200, r.text


def test_prometheus_sees_every_stage(stack: Any, prometheus: Prometheus) -> None:
    prom, stages = prometheus, set(STAGES)
    _load(stack.client, 1, 1, 1)  # warm-up: see BORN
    for expr, label, wanted in BORN:
        prom.wait_covering(expr, label, wanted)
    # Every allow-listed external series is really exported (the autoscaler's wish exists only for
    # deployments that autoscale). Polled: Ray evicts a gauge that its process has not re-exported
    # within two report intervals, so on a loaded machine a scrape can miss a live gauge for a while.
    wanted = set(monitoring.EXTERNAL) - {"ray_serve_autoscaling_desired_replicas"}
    deadline = time.monotonic() + 120
    while True:
        names = set(prom.client.get("/api/v1/label/__name__/values").json()["data"])
        if wanted <= names or time.monotonic() > deadline:
            break
        _load(stack.client, 0, 1, 0)  # keep the engine stepping, so its gauges are re-exported
        time.sleep(5)
    print("exported ray_vllm_*:", sorted(n for n in names if n.startswith("ray_vllm_")))
    print("exported ray_serve_* (replicas):", sorted(n for n in names if "replica" in n and "serve" in n))
    assert wanted <= names
    _load(stack.client, 10, 3, 3)

    p50 = "histogram_quantile(0.5, sum by (le, stage) (rate(ray_rag_stage_latency_seconds_bucket[1m])))"
    latency = prom.wait_covering(p50, "stage", stages)
    assert all(0 < s < 60 for s in latency.values()), latency
    route = "histogram_quantile(0.99, sum by (le, route) (rate(ray_rag_ingress_latency_seconds_bucket[1m])))"
    prom.wait_covering(route, "route", set(ROUTES))
    ttft = "histogram_quantile(0.5, sum by (le) (rate(ray_rag_generator_ttft_seconds_bucket[1m])))"
    prom.wait("generator TTFT p50", lambda: prom.values(ttft, "le"))
    # Texts per batch since start: encoder calls (one text each) per batch. (Not _sum / _count:
    # Ray 2.60 rebuilds a histogram's _sum from bucket midpoints, so a batch of 1 counts 0.5.)
    batch = 'sum(ray_rag_stage_requests_total{stage="encoder"}) / sum(ray_rag_encoder_batch_size_count)'
    assert prom.values(batch, "")[""] >= 1
    recorded_batch = "application:rag_encoder_batch_size:mean > 0"
    prom.wait("recorded encoder mean batch size", lambda: prom.values(recorded_batch, "application"))
    engine = "sum by (model_name) (rate(ray_vllm_generation_tokens_total[1m])) > 0"
    tokens = prom.wait("vLLM generated tokens/s", lambda: prom.values(engine, "model_name"))
    assert set(tokens) == {stack.cfg.generator.model}  # served_model_name: the configured name

    # The recording rules (evaluated every second) produce series too.
    prom.wait_covering("stage:rag_stage_latency_seconds:p50", "stage", stages)
    # 0, not absent, for a stage without errors.
    ratios = prom.wait_covering("stage:rag_stage_errors:ratio_rate1m", "stage", stages)
    assert all(0 <= v <= 1 for v in ratios.values()), ratios


def test_rules_and_dashboard_evaluate(stack: Any, prometheus: Prometheus) -> None:
    prom = prometheus
    groups = prom.wait("every rule evaluated", lambda: _evaluated(prom))
    bad = [(r["name"], r["lastError"]) for g in groups for r in g["rules"] if r["health"] != "ok"]
    assert not bad, bad
    path = ROOT / monitoring.OUT_DIR / "grafana" / "ragserve-dashboard.json"
    panels = json.loads(path.read_text())["panels"]
    targets = [(f"{p['title']} {t['legendFormat']}", t["expr"]) for p in panels for t in p.get("targets", [])]
    _load(stack.client, 2, 1, 1)  # fresh increments: the panels show rates over the last minute

    def empty_stage_targets() -> list[str]:
        # Grafana substitutes $__rate_interval; 1m is what it picks for a 1 s scrape interval.
        # Every query must be valid; a stage's row must show data (its errors only after errors).
        empty = [title for title, expr in targets if not prom.query(expr.replace("$__rate_interval", "1m"))]
        return [e for e in empty if e.split(":")[0] in STAGES and "errors" not in e]

    missing: list[str] = []

    def stage_panels_show_data() -> bool:
        missing[:] = empty_stage_targets()
        return not missing

    prom.wait(lambda: f"every stage panel shows data (empty: {missing})", stage_panels_show_data)


def _evaluated(prom: Prometheus) -> list[dict[str, Any]] | None:
    groups = prom.client.get("/api/v1/rules").json()["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    done = rules and all(r.get("lastEvaluation", "").startswith("20") for r in rules)
    return groups if done else None
