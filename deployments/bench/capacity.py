"""The capacity model: from a ``ragserve bench`` report measured on some hardware, the replicas each
stage needs for a target load there, and what the configured replicas can carry.

Inputs are the closed-loop steps of one report (``results.json``; one replica per stage, as the
shipped config runs), all measured on the same hardware:

* **per-replica throughput** ``mu`` of each stage: the encoder's is the best rate of the ``embed``
  steps (its batches fill under load, so its rate grows with concurrency); a serial stage's
  (preprocess, search, rerank) is one over its own service time at concurrency 1 (Ray's stage
  histogram); the generator's, for answers of ``n`` tokens, comes from the best rate of the
  ``query`` steps (``m`` tokens per answer at concurrency ``c``, so ``1/X`` seconds of the engine per
  query) and the engine's decode rate at that batch from the ``generate`` step at ``c`` (``T``
  tokens/s): ``1/mu(n) = 1/X + (n - m)/T``, each extra token costing ``1/T`` of the engine.
* **latency** ``W`` at that rate: each stage's own p50 from the same step; a query's end to end
  ``W_q + (n - m) * c / T`` (a sequence decodes at ``T / c`` tokens/s in a batch of ``c``).

For a target of ``qps`` requests/s, of which ``retrieval_share`` are retrieval only
(``/v1/retrieve``) and the rest RAG queries answering ``n`` tokens, each stage sees ``lambda_s``
requests/s (the generator only the queries) and needs the larger of

* ``ceil(lambda_s / (rho * mu_s))`` replicas: the throughput each can give at utilisation ``rho``
  (default 0.7: queueing delay grows as ``1/(1 - rho)``, so 30 % is kept as headroom), and
* ``ceil(lambda_s * W_s / (rho * slots_s))`` replicas: Little's law, the requests in flight in the
  stage spread over the slots each replica admits (``max_ongoing_requests``; the generator's
  engine batches at most ``max_num_seqs``). The ingress has no service time of its own in the
  report: it is sized by this rule alone, with the end-to-end latency.

The worker groups follow from those replicas by :mod:`deployments.render.capacity`, as the
RayService's do. Two capacities of the configured replicas are predicted: per stage (each stage
on its own CPUs, as in the RayService: ``min_s(R_s * mu_s / v_s)``), and for one machine where all
stages share the cores the report was measured on: each class's best measured rate (``X_ret``,
``mu_q(n)``) used the whole machine, so a mix of them gets ``1 / (r / X_ret + (1 - r) / mu_q(n))``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from deployments import stages as registry
from deployments.config import AppConfig
from deployments.errors import ConfigError


@dataclass(frozen=True)
class StageCost:
    """One stage's measured cost on one replica: requests/s it serves and the latency at that rate."""

    stage: str
    throughput: float
    latency_s: float
    basis: str  # how it was measured, for the printout


@dataclass(frozen=True)
class Costs:
    """What a bench report says about this hardware (see the module docstring)."""

    stages: dict[str, StageCost]
    retrieve_rps: float  # X_ret: best closed-loop rate of /v1/retrieve
    retrieve_latency_s: float
    query_rps: float  # X: best closed-loop rate of /v1/query
    query_latency_s: float
    query_tokens: float  # m: tokens per answer at that step
    query_concurrency: float  # c
    decode_tokens_per_s: float  # T: the engine's total decode rate at batch c

    def generator(self, answer_tokens: float) -> StageCost:
        """The generator's throughput and a query's latency for answers of ``answer_tokens`` tokens."""
        per_query = 1 / self.query_rps + (answer_tokens - self.query_tokens) / self.decode_tokens_per_s
        if per_query <= 0:
            raise ConfigError(f"answers of {answer_tokens:g} tokens are outside what the report measured "
                              f"({self.query_tokens:.0f} tokens per answer)")
        latency = self.query_latency_s + (answer_tokens - self.query_tokens) * self.query_concurrency \
            / self.decode_tokens_per_s
        return StageCost("generator", 1 / per_query, latency,
                         f"query {self.query_rps:.2f}/s at c={self.query_concurrency:g} with {self.query_tokens:.0f} "
                         f"tokens, decode {self.decode_tokens_per_s:.0f} tok/s")


@dataclass(frozen=True)
class Target:
    """The load to size for."""

    qps: float
    answer_tokens: float
    retrieval_share: float = 0.0
    utilisation: float = 0.7


@dataclass(frozen=True)
class Need:
    """One stage at the target: requests/s it sees, requests in flight, and the replicas needed."""

    stage: str
    rate: float
    throughput: float  # per replica
    in_flight: float
    by_throughput: int
    by_slots: int

    @property
    def replicas(self) -> int:
        return max(self.by_throughput, self.by_slots, 1)


def _closed(steps: Iterable[dict], target: str) -> list[dict]:
    return [s for s in steps if s.get("target") == target and s.get("mode") == "closed" and not s.get("errors")
            and (s.get("throughput_rps") or 0) > 0]


def _best(steps: list[dict], target: str) -> dict:
    if not steps:
        raise ConfigError(f"the report has no error-free closed-loop '{target}' step: run `ragserve bench` "
                          f"with --targets including {target}")
    return max(steps, key=lambda s: s["throughput_rps"])


def _stage_ms(step: dict, stage: str) -> float:
    value = step.get(f"stage_{stage}_ms")
    if not value:
        raise ConfigError(f"the report's {step['target']} step at load {step['load']:g} has no {stage} service time "
                          "(stage metrics are read back from Ray: run the bench with --settle > 0)")
    return float(value) / 1000


def costs_from_report(report: dict, cfg: AppConfig) -> Costs:
    """The per-stage costs of a ``ragserve bench`` report (``results.json``) for ``cfg``'s stages.

    Raises:
        ConfigError: a step the model needs is missing (it says which to run).
    """
    steps = report.get("steps") or []
    retrieve = _closed(steps, "retrieve")
    ret_best, ret_low = _best(retrieve, "retrieve"), min(retrieve, key=lambda s: s["load"])
    embed = _best(_closed(steps, "embed"), "embed")
    query = _best([s for s in _closed(steps, "query") if s.get("tokens_per_s")], "query")
    generate = _closed(steps, "generate")
    if not generate:
        raise ConfigError("the report has no closed-loop 'generate' step: run `ragserve bench` with --targets "
                          "including generate")
    decode = min(generate, key=lambda s: abs(s["load"] - query["load"]))
    out = {}
    for stage in registry.enabled(cfg, registry.STAGES):
        if stage.name == "encoder":
            out["encoder"] = StageCost("encoder", embed["throughput_rps"], _stage_ms(embed, "encoder"),
                                       f"embed {embed['throughput_rps']:.1f}/s at c={embed['load']:g}")
        elif stage.name != "generator":
            service = _stage_ms(ret_low, stage.name)
            out[stage.name] = StageCost(stage.name, 1 / service, service,
                                        f"1 / {1000 * service:.1f} ms at c={ret_low['load']:g}")
    return Costs(out, ret_best["throughput_rps"], ret_best["p50_ms"] / 1000, query["throughput_rps"],
                 query["p50_ms"] / 1000, query["tokens_per_s"] / query["throughput_rps"], query["load"],
                 decode["tokens_per_s"])


def slots(cfg: AppConfig, stage: str) -> int:
    """Requests one replica of ``stage`` works on at once."""
    if stage == "ingress":
        return cfg.ingress.deployment.max_ongoing_requests
    opts = registry.by_name(stage).config(cfg)
    n = opts.deployment.max_ongoing_requests
    return min(n, opts.max_num_seqs) if stage == "generator" else n


def needs(costs: Costs, target: Target, cfg: AppConfig) -> list[Need]:
    """Replicas per deployment (the stages in registry order, then the ingress) for ``target``."""
    rho, queries = target.utilisation, target.qps * (1 - target.retrieval_share)
    out = []
    for stage in registry.enabled(cfg, registry.STAGES):
        cost = costs.generator(target.answer_tokens) if stage.name == "generator" else costs.stages[stage.name]
        rate = queries if stage.name == "generator" else target.qps
        out.append(_need(stage.name, rate, cost.throughput, rate * cost.latency_s, rho, slots(cfg, stage.name)))
    latency = (target.retrieval_share * costs.retrieve_latency_s
               + (1 - target.retrieval_share) * costs.generator(target.answer_tokens).latency_s)
    out.append(_need("ingress", target.qps, math.inf, target.qps * latency, rho, slots(cfg, "ingress")))
    return out


def _need(stage: str, rate: float, throughput: float, in_flight: float, rho: float, per_replica: int) -> Need:
    by_throughput = 0 if math.isinf(throughput) else math.ceil(round(rate / (rho * throughput), 9))
    return Need(stage, rate, throughput, in_flight, by_throughput, math.ceil(round(in_flight / (rho * per_replica), 9)))


def stage_capacity(costs: Costs, cfg: AppConfig, answer_tokens: float, retrieval_share: float) -> tuple[float, str]:
    """Requests/s the configured replicas carry when each stage has its own CPUs (utilisation 1),
    and the stage that limits it."""
    from deployments.render.capacity import replica_bounds

    best = (math.inf, "")
    for stage in registry.enabled(cfg, registry.STAGES):
        replicas = replica_bounds(stage.config(cfg).deployment)[1]
        if stage.name == "generator":
            visits, mu = 1 - retrieval_share, costs.generator(answer_tokens).throughput
        else:
            visits, mu = 1.0, costs.stages[stage.name].throughput
        if visits > 0 and replicas * mu / visits < best[0]:
            best = (replicas * mu / visits, stage.name)
    return best


def predicted(costs: Costs, cfg: AppConfig, answer_tokens: float, retrieval_share: float) -> tuple[float, str]:
    """The configured replicas' capacity on the machine the report was measured on: the smaller of
    the per-stage bound and the shared-cores bound, and what limits it."""
    per_stage, stage = stage_capacity(costs, cfg, answer_tokens, retrieval_share)
    node = node_capacity(costs, answer_tokens, retrieval_share)
    return (node, "the machine's cores (shared by every stage)") if node <= per_stage else (per_stage, stage)


def node_capacity(costs: Costs, answer_tokens: float, retrieval_share: float) -> float:
    """Requests/s of the mix on the one machine the report was measured on (every class's best rate
    used all of its cores)."""
    r = retrieval_share
    return 1 / (r / costs.retrieve_rps + (1 - r) / costs.generator(answer_tokens).throughput)


def sized(cfg: AppConfig, replicas: dict[str, int]) -> AppConfig:
    """``cfg`` with each named deployment fixed at the given replicas (for the worker-group sizing)."""
    update = {}
    for stage in registry.enabled(cfg, registry.DEPLOYMENTS):
        if stage.name in replicas:
            part = stage.config(cfg)
            opts = part.deployment.model_copy(update={"autoscaling": None, "num_replicas": replicas[stage.name]})
            update[stage.config_field] = part.model_copy(update={"deployment": opts})
    return cfg.model_copy(update=update)


# --------------------------------------------------------------------------- printing
def format_costs(costs: Costs, answer_tokens: float) -> str:
    """The measured per-replica costs, one line per stage."""
    rows = [*costs.stages.values(), costs.generator(answer_tokens)]
    lines = [f"{'stage':11} {'req/s per replica':>17} {'latency ms':>10}  measured as"]
    lines += [f"{c.stage:11} {c.throughput:17.2f} {1000 * c.latency_s:10.1f}  {c.basis}" for c in rows]
    lines.append(f"classes on the whole machine: retrieve {costs.retrieve_rps:.2f}/s, query of {answer_tokens:g} tokens "
                 f"{costs.generator(answer_tokens).throughput:.2f}/s")
    return "\n".join(lines)


def format_needs(rows: list[Need], target: Target) -> str:
    """The replicas table for a target."""
    lines = [f"target: {target.qps:g} requests/s, {100 * target.retrieval_share:g}% retrieval only, answers of "
             f"{target.answer_tokens:g} tokens, utilisation {target.utilisation:g}",
             f"{'deployment':11} {'req/s':>7} {'per replica':>11} {'in flight':>9} {'by rate':>7} {'by slots':>8} "
             f"{'replicas':>8}"]
    for n in rows:
        per = "-" if math.isinf(n.throughput) else f"{n.throughput:.2f}"
        lines.append(f"{n.stage:11} {n.rate:7.2f} {per:>11} {n.in_flight:9.2f} {n.by_throughput:7d} {n.by_slots:8d} "
                     f"{n.replicas:8d}")
    return "\n".join(lines)
