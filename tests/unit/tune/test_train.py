"""The training loop's pure parts: batches, loss columns, the learning-rate schedule."""

from __future__ import annotations

import random

import pytest

from deployments.tune.data import Pair
from deployments.tune.train import TrainParams, batches, columns, lr_factor, plan


def pairs(n: int, docs: int) -> list[Pair]:
    return [Pair(question=f"q{i}", positive=f"c{i}", doc_id=f"d{i % docs}", negatives=(f"c{(i + 1) % n}",),
                 origin="synthetic", lang="en") for i in range(n)]


def test_a_batch_never_holds_two_questions_of_one_document() -> None:
    got = batches(pairs(40, docs=5), batch_size=8, seed=0, epoch=0, rank=0, world=1)
    assert sorted(p.question for b in got for p in b) == sorted(f"q{i}" for i in range(40))  # each once
    for b in got:
        assert len({p.doc_id for p in b}) == len(b) <= 8


def test_batches_are_a_function_of_seed_and_epoch() -> None:
    ps = pairs(30, docs=30)
    first = batches(ps, 8, seed=1, epoch=0, rank=0, world=1)
    assert first == batches(ps, 8, seed=1, epoch=0, rank=0, world=1)
    assert first != batches(ps, 8, seed=1, epoch=1, rank=0, world=1)
    assert first != batches(ps, 8, seed=2, epoch=0, rank=0, world=1)


def test_every_rank_gets_the_same_number_of_distinct_batches() -> None:
    ps = pairs(50, docs=50)
    r0, r1 = (batches(ps, 8, seed=0, epoch=0, rank=r, world=2) for r in (0, 1))
    assert len(r0) == len(r1) == 3  # 7 batches: the odd one out is dropped so DDP steps together
    assert not {p.question for b in r0 for p in b} & {p.question for b in r1 for p in b}


def test_the_plan_covers_every_epoch() -> None:
    p = TrainParams(epochs=3, batch_size=10)
    assert len(plan(pairs(20, docs=20), p, 0, 1)) == 6


def test_columns_hold_questions_positives_and_negatives_borrowing_where_short() -> None:
    texts = {f"c{i}": f"text {i}" for i in range(6)}
    batch = [Pair(question="q", positive="c0", doc_id="d0", negatives=("c1",), origin="labelled", lang="en"),
             Pair(question="r", positive="c2", doc_id="d2", negatives=(), origin="labelled", lang="en")]
    cols = columns(batch, texts, 2, random.Random(0))
    assert cols[:3] == [["q", "r"], ["text 0", "text 2"], ["text 1", cols[2][1]]]
    assert cols[2][1] != "text 2" and cols[3][0] != "text 0" and len(cols) == 4  # borrowed, never the positive


def test_learning_rate_warms_up_then_decays_to_zero() -> None:
    f = lr_factor(total=10, warmup=0.2)
    assert [f(s) for s in (0, 1)] == [0.5, 1.0]
    assert f(2) == 1.0 and f(6) == pytest.approx(0.5) and f(10) == 0.0
    assert max(f(s) for s in range(10)) == 1.0
