"""Retrieval admission (``deployments/ingress/admission.py``) on a hand-driven clock."""

from __future__ import annotations

import pytest

from deployments.errors import OverloadedError
from deployments.ingress.admission import RetrievalAdmission


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_a_lone_retrieval_measures_its_latency_as_the_service_time() -> None:
    clock = Clock()
    a = RetrievalAdmission(budget_s=1.0, clock=clock)
    assert a.estimate_s() == 0.0  # nothing measured yet
    t = a.admit()
    clock.t += 0.08
    a.done(t)
    assert a.service_s == pytest.approx(0.08)
    assert a.in_flight == 0 and a.estimate_s() == pytest.approx(0.08)


def test_overlapping_retrievals_measure_latency_over_mean_parallelism() -> None:
    clock = Clock()
    a = RetrievalAdmission(budget_s=10.0, samples=1, clock=clock)
    first = a.admit()
    clock.t += 0.1
    second = a.admit()  # from here two are in flight
    clock.t += 0.1
    a.done(first)  # 0.2 s with 1 then 2 in flight: mean 1.5, so 0.2 / 1.5
    assert a.service_s == pytest.approx(0.2 / 1.5)
    clock.t += 0.1
    a.done(second)  # 0.2 s with 2 then 1 in flight: mean 1.5 again
    assert a.service_s == pytest.approx(0.2 / 1.5)


def test_past_the_budget_is_a_503_with_retry_after_and_nothing_admitted() -> None:
    clock = Clock()
    a = RetrievalAdmission(budget_s=0.25, clock=clock)
    a.recent.append(0.1)
    tickets = [a.admit(), a.admit()]  # estimates 0.1 and 0.2 s: admitted
    with pytest.raises(OverloadedError) as err:
        a.admit()  # 3 x 0.1 = 0.3 s > 0.25 s
    assert err.value.status == 503 and err.value.retry_after_s == 1
    assert "ingress.retrieve_budget_s" in err.value.message
    assert a.in_flight == 2
    a.done(tickets[0], measured=False)
    a.admit()  # room again


def test_a_lone_retrieval_is_admitted_whatever_the_estimate() -> None:
    a = RetrievalAdmission(budget_s=0.01, clock=Clock())
    a.recent.append(5.0)
    a.admit()
    assert a.in_flight == 1


def test_no_budget_admits_everything() -> None:
    a = RetrievalAdmission(budget_s=None, clock=Clock())
    a.recent.append(5.0)
    for _ in range(100):
        a.admit()
    assert a.in_flight == 100


def test_a_failed_block_frees_its_slot_without_a_sample() -> None:
    clock = Clock()
    a = RetrievalAdmission(budget_s=1.0, clock=clock)
    with pytest.raises(RuntimeError), a.admitted():
        clock.t += 3.0
        raise RuntimeError("milvus down")
    assert a.in_flight == 0 and a.service_s is None
    with a.admitted():
        clock.t += 0.05
    assert a.service_s == pytest.approx(0.05)


def test_one_slow_first_retrieval_does_not_set_the_estimate() -> None:
    clock = Clock()
    a = RetrievalAdmission(budget_s=1.0, clock=clock)
    for latency in (3.0, 0.08, 0.09):  # a fresh replica's first call loads its models
        t = a.admit()
        clock.t += latency
        a.done(t)
    assert a.service_s == pytest.approx(0.09)
    assert [a.admit() for _ in range(5)]  # five in flight: about 0.45 s, within the budget
