"""The capacity model's arithmetic (deployments/bench/capacity.py) on a hand-made bench report,
every expected value computed by hand in the comments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deployments.bench import capacity
from deployments.bench.capacity import Target, costs_from_report, needs, node_capacity, predicted, stage_capacity
from deployments.cli import main
from deployments.config import AppConfig
from deployments.errors import ConfigError
from deployments.render.capacity import plan_groups


def _step(target: str, load: float, rps: float, p50_ms: float, tokens_per_s: float | None = None, **stages) -> dict:
    return {"target": target, "mode": "closed", "load": load, "errors": 0, "throughput_rps": rps, "p50_ms": p50_ms,
            "tokens_per_s": tokens_per_s, **{f"stage_{k}_ms": v for k, v in stages.items()}}


REPORT = {"steps": [
    _step("retrieve", 1, 20.0, 50.0, preprocess=0.5, encoder=20.0, search=5.0),
    _step("retrieve", 8, 40.0, 200.0, preprocess=0.6, encoder=90.0, search=20.0),
    _step("embed", 1, 30.0, 33.0, encoder=18.0),
    _step("embed", 16, 80.0, 190.0, encoder=100.0),
    _step("query", 8, 2.0, 4000.0, 64.0, generator=3800.0),  # 64 tok/s / 2 per s: m = 32 tokens
    _step("query", 16, 1.9, 8000.0, 61.0, generator=7900.0),
    _step("generate", 1, 1.0, 1000.0, 30.0, generator=1000.0),
    _step("generate", 8, 4.0, 2000.0, 128.0, generator=2000.0),  # T at c=8
    _step("generate", 16, 5.0, 3000.0, 160.0, generator=3000.0),
    {**_step("query", 32, 9.0, 100.0, 300.0), "errors": 3},  # failed requests: never the best rate
    {**_step("retrieve", 32, 90.0, 10.0), "mode": "open"},   # open loop: not a capacity
]}
CFG = AppConfig()


@pytest.fixture
def costs() -> capacity.Costs:
    return costs_from_report(REPORT, CFG)


def test_per_replica_costs(costs: capacity.Costs) -> None:
    assert costs.stages["encoder"].throughput == 80.0  # the best embed rate (batches fill under load)
    assert costs.stages["encoder"].latency_s == pytest.approx(0.1)
    assert costs.stages["preprocess"].throughput == pytest.approx(2000.0)  # 1 / 0.5 ms, at concurrency 1
    assert costs.stages["search"].throughput == pytest.approx(200.0)  # 1 / 5 ms
    assert (costs.retrieve_rps, costs.query_rps, costs.query_tokens, costs.query_concurrency) == (40.0, 2.0, 32.0, 8)
    assert costs.decode_tokens_per_s == 128.0  # generate at the query's concurrency


@pytest.mark.parametrize(("tokens", "rps", "latency_s"), [
    (32, 2.0, 4.0),           # as measured
    (64, 4 / 3, 6.0),         # 1/mu = 1/2 + 32/128 = 0.75; W = 4 + 32 * 8 / 128 = 6
    (16, 8 / 3, 3.0),         # 1/mu = 1/2 - 16/128 = 0.375; W = 4 - 16 * 8 / 128 = 3
])
def test_generator_throughput_and_latency_by_answer_length(costs, tokens: float, rps: float, latency_s: float) -> None:
    g = costs.generator(tokens)
    assert (g.throughput, g.latency_s) == (pytest.approx(rps), pytest.approx(latency_s))


def test_an_answer_length_the_engine_time_cannot_cover_is_refused(costs) -> None:
    with pytest.raises(ConfigError, match="outside what the report measured"):
        costs.generator(-40)  # 1/2 - 72/128 < 0


def test_replicas_for_a_target(costs) -> None:
    rows = {n.stage: n for n in needs(costs, Target(qps=10, answer_tokens=64, retrieval_share=0.5), CFG)}
    # generator: 5 queries/s at 4/3 per replica and utilisation 0.7 -> ceil(5.357) = 6; in flight 5 * 6 s = 30
    # over 32 slots at 0.7 -> ceil(1.34) = 2; the rate decides.
    g = rows["generator"]
    assert (g.rate, g.in_flight, g.by_throughput, g.by_slots, g.replicas) == (5.0, pytest.approx(30.0), 6, 2, 6)
    # encoder: ceil(10 / (0.7 * 80)) = 1; in flight 10 * 0.1 = 1 over 64 slots -> 1
    assert (rows["encoder"].by_throughput, rows["encoder"].by_slots, rows["encoder"].replicas) == (1, 1, 1)
    assert rows["preprocess"].replicas == rows["search"].replicas == 1
    # ingress: Little's law only: 10/s * (0.5 * 0.2 s + 0.5 * 6 s) = 31 in flight over 128 slots -> 1
    assert (rows["ingress"].in_flight, rows["ingress"].by_throughput, rows["ingress"].replicas) == \
        (pytest.approx(31.0), 0, 1)
    assert list(rows) == ["preprocess", "encoder", "search", "generator", "ingress"]


def test_little_law_decides_when_requests_stay_long(costs) -> None:
    cfg = AppConfig.model_validate({"generator": {"max_num_seqs": 4, "deployment": {"max_ongoing_requests": 8}}})
    g = next(n for n in needs(costs, Target(qps=2, answer_tokens=64), cfg) if n.stage == "generator")
    # 2 queries/s: ceil(2 / (0.7 * 4/3)) = 3 by rate; 2 * 6 s = 12 in flight over min(8, 4) slots at 0.7 -> 5
    assert (g.by_throughput, g.by_slots, g.replicas) == (3, 5, 5)


def test_capacity_of_the_configured_replicas(costs) -> None:
    # one machine, half retrieval, 64 tokens: 1 / (0.5 / 40 + 0.5 / (4/3)) = 1 / 0.3875
    assert node_capacity(costs, 64, 0.5) == pytest.approx(2.5806, abs=1e-4)
    # a stage on its own CPUs: the generator's 4/3 per s carries 4/3 / 0.5 = 2.667 requests/s
    assert stage_capacity(costs, CFG, 64, 0.5) == (pytest.approx(8 / 3), "generator")
    cap, limit = predicted(costs, CFG, 64, 0.5)
    assert cap == pytest.approx(2.5806, abs=1e-4) and "cores" in limit
    # retrieval only: the encoder bounds the stages (80/s), the machine the class (40/s)
    assert stage_capacity(costs, CFG, 64, 1.0) == (80.0, "encoder")
    assert predicted(costs, CFG, 64, 1.0)[0] == 40.0
    two = AppConfig.model_validate({"generator": {"deployment": {"num_replicas": 2}}})
    assert stage_capacity(costs, two, 64, 0.5) == (pytest.approx(16 / 3), "generator")


def test_worker_groups_of_the_replicas(costs) -> None:
    rows = needs(costs, Target(qps=10, answer_tokens=64, retrieval_share=0.5), CFG)
    sized = capacity.sized(CFG, {n.stage: n.replicas for n in rows})
    assert sized.generator.deployment.num_replicas == 6 and sized.generator.deployment.autoscaling is None
    # 6 generators of 1 CPU + 0.5 + 3 x 0.1 = 6.8 CPUs: two 4-CPU pods (4 generators, then 2 and the rest)
    assert plan_groups(sized, 4, None)["cpu-workers"][0].min_pods == 2


@pytest.mark.parametrize(("drop", "message"), [
    ("embed", "no error-free closed-loop 'embed' step"),
    ("generate", "no closed-loop 'generate' step"),
    ("query", "no error-free closed-loop 'query' step"),
])
def test_a_report_missing_a_target_says_what_to_run(drop: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        costs_from_report({"steps": [s for s in REPORT["steps"] if s["target"] != drop]}, CFG)


def test_a_report_without_stage_times_says_so() -> None:
    steps = [{k: v for k, v in s.items() if k != "stage_search_ms"} for s in REPORT["steps"]]
    with pytest.raises(ConfigError, match="no search service time"):
        costs_from_report({"steps": steps}, CFG)


def test_the_command_prints_capacity_replicas_and_groups(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / "results.json"
    path.write_text(json.dumps(REPORT))
    assert main(["capacity", "--report", str(path), "--qps", "10", "--answer-tokens", "64",
                 "--retrieval-share", "0.5", "--cpu-pod-cpus", "4"]) == 0
    out = capsys.readouterr().out
    assert "on the measured machine 2.58 requests/s" in out
    assert "generator      5.00        1.33     30.00       6        2        6" in out
    # The shipped config (the command's default): 6 generators of 0.5 CPUs + 0.5 + 3 x 0.1 = 3.8 CPUs
    assert "cpu-workers: 1 pod of 4 CPUs" in out
