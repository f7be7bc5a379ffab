"""The training set on disk: records, checks, the held-out split, the digest."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployments.evaluation.dataset import DatasetError
from deployments.tune import data

CHUNKS = (data.Chunk(id="c1", doc_id="d1", text="one"), data.Chunk(id="c2", doc_id="d2", text="two"))
PAIR = data.Pair(question="Which is one?", positive="c1", doc_id="d1", negatives=("c2",), origin="synthetic", lang="en")


def test_a_saved_set_loads_back_equal_and_its_digest_follows_the_data(tmp_path: Path) -> None:
    held = (data.HeldOut(id="h1", question="And two?", relevant=("d2",), lang="en"),)
    ts = data.TrainingSet(CHUNKS, (PAIR,), held, {"seed": 0})
    ts.save(tmp_path / "a")
    back = data.TrainingSet.load(tmp_path / "a")
    assert (back.chunks, back.pairs, back.heldout) == (ts.chunks, ts.pairs, ts.heldout)
    assert back.meta["pairs"] == 1 and back.meta["by_origin"] == {"synthetic": 1}
    digest = data.TrainingSet.digest(tmp_path / "a")
    data.TrainingSet(CHUNKS, (PAIR, PAIR.model_copy(update={"question": "One?"})), held, {}).save(tmp_path / "b")
    assert data.TrainingSet.digest(tmp_path / "b") != digest


def test_check_refuses_unknown_chunks_and_held_out_questions_that_are_trained_on() -> None:
    bad = PAIR.model_copy(update={"negatives": ("c9",)})
    leak = data.HeldOut(id="h1", question="  which is ONE? ", relevant=("d1",), lang="en")
    with pytest.raises(DatasetError) as err:
        data.TrainingSet(CHUNKS, (bad,), (leak,), {}).check()
    assert any("c9" in p for p in err.value.problems) and any("h1" in p for p in err.value.problems)
    with pytest.raises(DatasetError, match="nothing to train on"):
        data.TrainingSet(CHUNKS, (), (), {}).check()


def test_a_missing_set_says_how_to_make_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="ragserve tune data"):
        data.TrainingSet.load(tmp_path)


def test_labelled_lines_are_validated_with_their_line_numbers(tmp_path: Path) -> None:
    f = tmp_path / "pairs.jsonl"
    f.write_text('{"question": "What is one?", "doc_id": "d1"}\n\n{"question": "", "doc_id": "d2"}\n'
                 '{"question": "x?", "doc": "d3"}\n', encoding="utf-8")
    with pytest.raises(DatasetError) as err:
        data.read_jsonl(f, data.Labelled)
    assert [p.split(":")[1] for p in err.value.problems] == ["3", "4"]


def test_the_split_is_seeded_and_keeps_every_item_once() -> None:
    items = list(range(10))
    train, held = data.split(items, 0.2, seed=1)
    assert len(held) == 2 and sorted(train + held) == items
    assert (train, held) == data.split(items, 0.2, seed=1) and data.split(items, 0.2, seed=2) != (train, held)


def test_the_bundled_evaluation_questions_can_be_held_out() -> None:
    held = data.heldout_from_evalset(None)
    assert len(held) > 100 and {h.type for h in held} == {"paraphrase", "exact", "mixed"}
    assert all(h.relevant for h in held)
