"""The bulk pipeline next to a serving app (deployments/ingest/bulk.py: fit, app_headroom_cpus):
it reserves only the CPUs the app's replicas leave free, down to one shrunken actor, or nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployments.config import AppConfig, IngestConfig, load_config
from deployments.ingest.bulk import PARSE_CPUS, WRITE_CPUS, Shape, app_headroom_cpus, fit

ROOT = Path(__file__).resolve().parents[3]
ICFG = IngestConfig(embed_actors=3, embed_actor_cpus=1.0)


def test_configured_shape_is_the_config() -> None:
    assert Shape.configured(ICFG) == Shape(3, 1.0, PARSE_CPUS, WRITE_CPUS, None)


@pytest.mark.parametrize(("free", "actors"), [(1.35, 1), (2.34, 1), (2.35, 2), (3.35, 3), (40.0, 3)])
def test_as_many_configured_actors_as_fit(free: float, actors: int) -> None:
    # parse 0.25 + write 0.1 beside the actors: 1.35 CPUs hold one 1-CPU actor, 2.35 two.
    assert fit(free, ICFG) == Shape(actors, 1.0, PARSE_CPUS, WRITE_CPUS, cpu_limit=free)


def test_when_one_actor_does_not_fit_every_reservation_shrinks() -> None:
    shape = fit(0.7, ICFG)  # the shipped app on 2 CPUs leaves 0.7
    assert shape is not None and shape.embed_actors == 1
    # 0.7 / 1.35 of each: 0.5185 (embed), 0.1296 (parse), 0.0518 (write), rounded down to Ray's 1e-4.
    assert (shape.embed_actor_cpus, shape.parse_cpus, shape.write_cpus) == (0.5185, 0.1296, 0.0518)
    assert shape.embed_actor_cpus + shape.parse_cpus + shape.write_cpus <= 0.7
    assert shape.cpu_limit == 0.7


@pytest.mark.parametrize("free", [0.0, 0.09, -1.5])
def test_no_room_is_none(free: float) -> None:
    assert fit(free, ICFG) is None


def test_headroom_is_what_autoscaling_may_still_add() -> None:
    cfg = AppConfig.model_validate({
        "encoder": {"deployment": {"resources": {"num_cpus": 1.5},
                                   "autoscaling": {"min_replicas": 1, "max_replicas": 4}}},
        "search": {"deployment": {"resources": {"num_cpus": 0.25}, "num_replicas": 3}},  # fixed: no growth
        "preprocess": {"deployment": {"resources": {"num_cpus": 0.5},
                                      "autoscaling": {"min_replicas": 2, "max_replicas": 3}}},
    })
    base = app_headroom_cpus(AppConfig())
    assert app_headroom_cpus(cfg) - base == pytest.approx((4 - 1) * 1.5 + (3 - 2) * 0.5)


def test_the_shipped_single_machine_config_claims_no_growth() -> None:
    assert app_headroom_cpus(load_config(ROOT / "cluster" / "serve_config.yaml")) == 0.0  # min = max = 1 everywhere
