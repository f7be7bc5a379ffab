"""Unit tests of ``deployments.autoscaling`` (the per-stage policies) and their config mapping.

The policies are run on synthetic inputs: directly, and through Ray Serve's own wrapper
(``_apply_autoscaling_config``: delays, bounds) on a fake clock, as the Serve controller runs
them. Covered: scale-up on load, the dead band (hysteresis), back to min when idle, bounds,
the fallback when no replica reports its signal, the leaked-stream-count trap
(ray-project/ray#61551), ingress and generator reaching their minimum on the same tick, and
``AutoscalingOptions`` → Serve's ``autoscaling_config`` for every shipped config.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from deployments import autoscaling as A
from deployments import stages
from deployments.config import AutoscalingOptions, DeploymentOptions, load_config

serve_policy = pytest.importorskip("ray.serve.autoscaling_policy", reason="ray[serve] not installed")
from ray.serve.config import AutoscalingConfig, AutoscalingContext  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
STAGES = tuple(s.config_field for s in stages.DEPLOYMENTS if not s.optional)  # the shipped, always-on ones


# --------------------------------------------------------------------------- pure functions
def test_desired_replicas_scales_with_load() -> None:
    assert A.desired_replicas(40, 10, current=1, tolerance=0.1) == 4.0
    assert A.desired_replicas(5, 10, current=4, tolerance=0.1) == 0.5


def test_no_load_gives_zero_whatever_the_band() -> None:
    assert A.desired_replicas(0, 10, current=5, tolerance=0.99) == 0.0
    assert A.desired_replicas(-1, 10, current=5, tolerance=0.0) == 0.0


def test_dead_band_keeps_the_count() -> None:
    # 2 replicas x 10 = 20 is the target; 19 and 21.5 are within 10 %, 17 is not.
    assert A.desired_replicas(19, 10, current=2, tolerance=0.1) == 2.0
    assert A.desired_replicas(21.5, 10, current=2, tolerance=0.1) == 2.0
    assert A.desired_replicas(17, 10, current=2, tolerance=0.1) == pytest.approx(1.7)
    assert A.desired_replicas(19, 10, current=2, tolerance=0.0) == pytest.approx(1.9)


def test_target_must_be_positive() -> None:
    with pytest.raises(ValueError):
        A.desired_replicas(1, 0, current=1, tolerance=0.1)


def test_reported_total_counts_running_replicas_only() -> None:
    metrics = {"m": {"r1": 3.0, "r2": 4.0, "gone": 100.0}}
    assert A.reported_total(metrics, "m", ["r1", "r2", "r3"]) == 7.0
    assert A.reported_total(metrics, "other", ["r1"]) is None
    assert A.reported_total(None, "m", ["r1"]) is None
    assert A.reported_total(metrics, "m", ["r3"]) is None


def test_encoder_load_is_the_larger_of_requests_and_texts() -> None:
    assert A.encoder_load(requests=3, queued_texts=200) == 200
    assert A.encoder_load(requests=30, queued_texts=2) == 30
    assert A.encoder_load(requests=5, queued_texts=None) == 5


def test_generator_load_ignores_handle_running_counts() -> None:
    assert A.generator_load(sequences=0, handle_queued=0, requests=12) == 0
    assert A.generator_load(sequences=6, handle_queued=2, requests=12) == 8
    assert A.generator_load(sequences=None, handle_queued=2, requests=12) == 12  # fallback


def test_generator_adds_a_replica_while_work_waits() -> None:
    kw = dict(handle_queued=0.0, requests=0.0, target_per_replica=24, tolerance=0.1)
    # 30 sequences on 2 replicas is below 2 x 24, but 3 of them wait in an engine.
    assert A.generator_desired(sequences=30, waiting=3, current=2, **kw) == 3.0
    assert A.generator_desired(sequences=30, waiting=0, current=2, **kw) == pytest.approx(1.25)
    assert A.generator_desired(sequences=0, waiting=0, current=2, **kw) == 0.0


def test_engine_stats_split_waiting_from_running() -> None:
    assert A.engine_stats(40, max_num_seqs=32) == {A.GENERATOR_SEQUENCES: 40.0, A.GENERATOR_WAITING: 8.0}
    assert A.engine_stats(3, max_num_seqs=32)[A.GENERATOR_WAITING] == 0.0


def test_batch_queue_length_reads_serve_batch_queue() -> None:
    class Queue:
        def qsize(self) -> int:
            return 7

    @dataclass
    class LazyWrapper:
        _queue: Any = None

        def _get_curr_iteration_start_times(self) -> None: ...

    class Batched:
        pass

    lazy, batched = LazyWrapper(), Batched()
    batched._get_curr_iteration_start_times = lazy._get_curr_iteration_start_times  # type: ignore[attr-defined]
    assert A.batch_queue_length(batched) == 0  # queue not created yet: nothing has arrived
    lazy._queue = type("BatchQueue", (), {"queue": Queue()})()
    assert A.batch_queue_length(batched) == 7
    assert A.batch_queue_length(object()) is None  # unknown layout: no report, no failure


def test_batch_queue_length_on_a_real_serve_batch_method() -> None:
    from ray import serve

    class Owner:
        @serve.batch(max_batch_size=4)
        async def run(self, items: list[int]) -> list[int]:
            return items

    # Before any call the lazy queue does not exist; reading must not create it.
    assert A.batch_queue_length(Owner().run) == 0


# --------------------------------------------------------------------------- the Serve policies
def _ctx(
    config: AutoscalingConfig,
    current: int,
    target: int | None = None,
    requests: float = 0.0,
    queued: float = 0.0,
    reported: dict[str, float] | None = None,
    policy_state: dict[str, Any] | None = None,
) -> AutoscalingContext:
    """A context as the controller builds it; ``reported`` totals are split over the replicas."""
    replicas = [f"r{i}" for i in range(current)]
    metrics = {name: {r: total / current for r in replicas} for name, total in (reported or {}).items()}
    return AutoscalingContext(
        deployment_id=None, deployment_name="d", app_name="ragserve",
        current_num_replicas=current, target_num_replicas=current if target is None else target,
        running_replicas=replicas, total_num_requests=requests, total_queued_requests=queued,
        aggregated_metrics=metrics if current else {}, raw_metrics=None,
        capacity_adjusted_min_replicas=config.min_replicas, capacity_adjusted_max_replicas=config.max_replicas,
        policy_state=policy_state or {}, last_scale_up_time=None, last_scale_down_time=None,
        current_time=None, config=config,
    )


def _config(**kw: Any) -> AutoscalingConfig:
    base = dict(min_replicas=1, max_replicas=4, target_ongoing_requests=16, upscale_delay_s=2,
                downscale_delay_s=10, look_back_period_s=30)
    return AutoscalingConfig(**{**base, **kw})


def test_encoder_policy_scales_on_queued_texts() -> None:
    cfg = _config()
    policy = A.EncoderQueuePolicy(tolerance=0.1)
    # One bulk call: 1 request, 128 texts waiting -> 8 replicas' worth of work.
    assert policy(_ctx(cfg, 1, requests=1, reported={A.ENCODER_QUEUED_TEXTS: 128}))[0] == 8.0
    # No report yet (replica starting): the request count decides.
    assert policy(_ctx(cfg, 1, requests=32))[0] == 2.0
    assert policy(_ctx(cfg, 3, reported={A.ENCODER_QUEUED_TEXTS: 0}))[0] == 0.0


def test_generator_policy_uses_engine_sequences() -> None:
    cfg = _config(target_ongoing_requests=8)
    policy = A.GeneratorPolicy()
    ctx = _ctx(cfg, 2, requests=40, queued=0,
               reported={A.GENERATOR_SEQUENCES: 0, A.GENERATOR_WAITING: 0})
    assert policy(ctx)[0] == 0.0  # the handles still count 40 streams; the engines hold none
    ctx = _ctx(cfg, 1, requests=20, queued=4, reported={A.GENERATOR_SEQUENCES: 16, A.GENERATOR_WAITING: 0})
    assert policy(ctx)[0] == 2.5  # (16 + 4 queued) / 8


# --------------------------------------------------------------------------- through Serve's wrapper
@dataclass
class _Clock:
    now: float = 1_000.0

    def time(self) -> float:
        return self.now


@dataclass
class _Sim:
    """One deployment under Serve's decision loop: the wrapped policy, bounds, a fake clock."""

    policy: Callable[[AutoscalingContext], tuple[Any, dict[str, Any]]]
    config: AutoscalingConfig
    replicas: int = 0  # running
    start_ticks: int = 0  # ticks an added replica takes to start (0: at once)
    target: int = 0
    state: dict[str, Any] = field(default_factory=dict)
    history: list[int] = field(default_factory=list)  # the target after each tick
    _starting_for: int = 0

    def __post_init__(self) -> None:
        self.decide = serve_policy._apply_autoscaling_config(self.policy)
        self.replicas = self.target = self.config.initial_replicas or self.config.min_replicas

    def tick(self, **load: Any) -> int:
        ctx = _ctx(self.config, self.replicas, target=self.target, policy_state=self.state, **load)
        decision, self.state = self.decide(ctx)
        cfg = self.config  # Serve's apply_bounds
        self.target = max(cfg.min_replicas, min(cfg.max_replicas, math.ceil(decision)))
        if self.target <= self.replicas:  # stopping (and cancelling a start) is immediate
            self.replicas, self._starting_for = self.target, 0
        else:
            self._starting_for += 1
            if self._starting_for > self.start_ticks:
                self.replicas, self._starting_for = self.target, 0
        self.history.append(self.target)
        return self.target


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    """Serve's delay logic reads ``time.time()``; drive it from a fake clock instead."""
    c = _Clock()
    monkeypatch.setattr(serve_policy, "time", c)
    return c


def _run(sims: Sequence[_Sim], clock: _Clock, loads: Sequence[Callable[[_Sim], dict[str, Any]]],
         seconds: int) -> None:
    for _ in range(seconds):
        clock.now += 1.0
        for sim, load in zip(sims, loads):
            sim.tick(**load(sim))


def test_load_step_scales_up_after_the_delay_and_back_to_min(clock: _Clock) -> None:
    sim = _Sim(A.EncoderQueuePolicy(), _config(upscale_delay_s=2, downscale_delay_s=10))
    busy = lambda s: {"requests": 4, "reported": {A.ENCODER_QUEUED_TEXTS: 200}}  # noqa: E731
    idle = lambda s: {"reported": {A.ENCODER_QUEUED_TEXTS: 0}}  # noqa: E731
    _run([sim], clock, [busy], 8)
    assert sim.history[0] == 1, "scaled before upscale_delay_s"
    assert max(sim.history) == 4, "bounded by max_replicas"
    _run([sim], clock, [idle], 9)
    assert sim.replicas == 4, "scaled down before downscale_delay_s"
    _run([sim], clock, [idle], 3)
    assert sim.replicas == 1


def test_a_starting_replica_is_not_cancelled_while_the_load_lasts(clock: _Clock) -> None:
    """CI on 2 cores: under a constant load the encoder went 1 -> 2 -> 1 -> 2 -> 1 -> 2, each
    added replica stopped while STARTING, because the one running replica's backlog report went
    missing while the new one loaded its model (the request count alone is under target)."""
    cfg = _config(max_replicas=2, upscale_delay_s=1, downscale_delay_s=6)
    loads = iter([{"requests": 8, "reported": {A.ENCODER_QUEUED_TEXTS: 448}}] * 3 + [{"requests": 8}] * 30)
    sim = _Sim(A.EncoderQueuePolicy(), cfg, start_ticks=25)
    _run([sim], clock, [lambda s: next(loads)], 33)
    assert sim.history[2:] == [2] * 31 and sim.replicas == 2  # held, then running
    # Work gone while the replica still starts: nothing is held, the stage drains.
    sim = _Sim(A.EncoderQueuePolicy(), cfg, start_ticks=25)
    loads = iter([{"requests": 8, "reported": {A.ENCODER_QUEUED_TEXTS: 448}}] * 3 + [{"requests": 0}] * 10)
    _run([sim], clock, [lambda s: next(loads)], 13)
    assert sim.target == 1
    # The generator holds the same way (engine start is the slowest of all).
    gen = A.GeneratorPolicy()
    assert gen(_ctx(_config(target_ongoing_requests=8), 1, target=3, requests=4))[0] == 3.0
    assert gen(_ctx(_config(target_ongoing_requests=8), 1, target=3, requests=0))[0] == 0.0


def test_load_at_a_boundary_does_not_flap(clock: _Clock) -> None:
    sim = _Sim(A.EncoderQueuePolicy(tolerance=0.1), _config(upscale_delay_s=0, downscale_delay_s=0))
    _run([sim], clock, [lambda s: {"reported": {A.ENCODER_QUEUED_TEXTS: 32}}], 3)
    assert sim.replicas == 2
    # 30..34 texts per 2 x 16 stays within the 10 % band: the count holds, with no delays at all.
    wobble = iter([30, 34, 31, 33, 30, 34] * 3)
    _run([sim], clock, [lambda s: {"reported": {A.ENCODER_QUEUED_TEXTS: next(wobble)}}], 18)
    assert set(sim.history[3:]) == {2}
    # Without the band the same wobble flaps 2 <-> 3.
    bare = _Sim(A.EncoderQueuePolicy(tolerance=0.0), _config(upscale_delay_s=0, downscale_delay_s=0))
    bare.replicas = 2
    wobble = iter([30, 34, 31, 33, 30, 34] * 3)
    _run([bare], clock, [lambda s: {"reported": {A.ENCODER_QUEUED_TEXTS: next(wobble)}}], 18)
    assert {2, 3} <= set(bare.history)


def test_generator_returns_to_min_despite_a_leaked_stream_count(clock: _Clock) -> None:
    """ray-project/ray#61551: handle-side running counts of streams stuck above zero."""
    cfg = _config(target_ongoing_requests=2, upscale_delay_s=1, downscale_delay_s=5)
    ours, builtin = _Sim(A.GeneratorPolicy(), cfg), _Sim(serve_policy.replica_queue_length_autoscaling_policy, cfg)
    busy = lambda s: {"requests": 8, "reported": {A.GENERATOR_SEQUENCES: 8}}  # noqa: E731
    _run([ours, builtin], clock, [busy, busy], 5)
    assert ours.replicas == builtin.replicas == 4
    leaked = lambda s: {"requests": 5, "reported": {A.GENERATOR_SEQUENCES: 0}}  # noqa: E731
    _run([ours, builtin], clock, [leaked, leaked], 10)
    assert ours.replicas == 1
    assert builtin.replicas == 3, "the built-in policy stays pinned by the leaked count"


def test_ingress_and_generator_reach_min_together(clock: _Clock) -> None:
    """The ingress (built-in policy) counts the streams it relays; the generator, its engine's
    sequences. Both drop to zero when the last stream ends, so with the same downscale delay
    they arrive at their minimum on the same tick, not one delay after the other."""
    ingress = _Sim(serve_policy.replica_queue_length_autoscaling_policy,
                   _config(target_ongoing_requests=4, max_replicas=3, downscale_delay_s=6))
    generator = _Sim(A.GeneratorPolicy(), _config(target_ongoing_requests=4, max_replicas=3, downscale_delay_s=6))
    streams = [12] * 8 + [0] * 12
    it_i, it_g = iter(streams), iter(streams)
    _run([ingress, generator], clock,
         [lambda s: {"requests": next(it_i)},
          lambda s: (lambda n: {"requests": n, "reported": {A.GENERATOR_SEQUENCES: n}})(next(it_g))], 20)
    assert max(ingress.history) == max(generator.history) == 3
    assert ingress.history.index(1, 3) == generator.history.index(1, 3)
    assert ingress.replicas == generator.replicas == 1


def test_min_replicas_zero_scales_to_zero_and_back(clock: _Clock) -> None:
    sim = _Sim(A.GeneratorPolicy(), _config(min_replicas=0, initial_replicas=1, downscale_delay_s=3))
    _run([sim], clock, [lambda s: {"reported": {A.GENERATOR_SEQUENCES: 0}}], 5)
    assert sim.replicas == 0
    _run([sim], clock, [lambda s: {"requests": 3, "queued": 3}], 1)  # Serve's cold-start path
    assert sim.replicas >= 1


# --------------------------------------------------------------------------- config mapping
def test_requests_policy_maps_to_serves_builtin() -> None:
    cfg = AutoscalingOptions(max_replicas=3).serve_config()
    assert "policy" not in cfg and "tolerance" not in cfg and "metrics_interval_s" not in cfg
    assert AutoscalingConfig(**cfg).policy.is_default_policy_function()


# Serve marks metrics_interval_s deprecated but still reads it (the only per-deployment report interval).
@pytest.mark.filterwarnings("ignore:The `metrics_interval_s` field:DeprecationWarning")
@pytest.mark.parametrize("name,cls", [("queue", A.EncoderQueuePolicy), ("generator", A.GeneratorPolicy)])
def test_custom_policies_map_to_importable_serve_policies(name: str, cls: type) -> None:
    opts = DeploymentOptions(autoscaling=AutoscalingOptions(
        max_replicas=3, policy=name, tolerance=0.2, look_back_period_s=5, metrics_interval_s=0.5))
    serve_cfg = AutoscalingConfig(**opts.serve_options()["autoscaling_config"])
    assert serve_cfg.policy.policy_function == A.POLICY_PATHS[name]
    assert serve_cfg.policy.policy_kwargs == {"tolerance": 0.2}
    assert serve_cfg.look_back_period_s == 5 and serve_cfg.metrics_interval_s == 0.5
    # Serve pickles the module by value (the controller may not have ragserve): an equal class.
    assert serve_cfg.policy.get_policy().__name__ == cls.__name__


@pytest.mark.parametrize("bad,where", [
    ({"policy": "latency"}, "policy"),
    ({"tolerance": 1.0}, "tolerance"),
    ({"look_back_period_s": 5}, "look_back_period_s"),
    ({"look_back_period_s": 1, "metrics_interval_s": 1}, "look_back_period_s"),
])
def test_bad_autoscaling_options_are_rejected(bad: dict[str, Any], where: str) -> None:
    with pytest.raises(ValidationError, match=where):
        AutoscalingOptions(**bad)


def _shipped_configs() -> list[tuple[str, Any]]:
    from deployments.render import k8s as render

    found = [("serve_config.yaml", load_config(REPO / "cluster" / "serve_config.yaml"))]
    for env_ in render.ENVIRONMENTS:
        found.append((env_.name, render.merged_serve_config(REPO / env_.overlay, REPO)[1]))
    return found


@pytest.mark.parametrize("name,cfg", _shipped_configs(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_shipped_stage_maps_to_a_valid_serve_config(name: str, cfg: Any) -> None:
    for stage in STAGES:
        auto = getattr(cfg, stage).deployment.autoscaling
        if auto is not None:
            AutoscalingConfig(**auto.serve_config())


def test_production_stages_scale_on_their_chosen_signal() -> None:
    configs = dict(_shipped_configs())
    prod = configs["prod"]
    policies = {s: getattr(prod, s).deployment.autoscaling.policy for s in STAGES}
    assert policies == {"ingress": "requests", "preprocess": "requests", "encoder": "queue",
                        "search": "requests", "generator": "generator"}
    # Ingress and generator drain together only if they wait as long before scaling down.
    assert prod.ingress.deployment.autoscaling.downscale_delay_s == prod.generator.deployment.autoscaling.downscale_delay_s
