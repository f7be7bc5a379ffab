"""Load drivers' workloads (deployments/bench/load.py): a ``mix:<share>`` target spreads its
retrievals evenly among the RAG queries."""

from __future__ import annotations

import pytest

from deployments.bench.load import is_retrieval, make_request


@pytest.mark.parametrize("share", [0.0, 0.25, 0.5, 0.7, 1.0])
def test_mixed_requests_hold_the_share_in_any_window(share: float) -> None:
    picks = [is_retrieval(i, share) for i in range(1000)]
    assert sum(picks) == int(1000 * share)
    for start in range(0, 990, 37):  # any ten consecutive requests: the share, give or take one
        assert abs(sum(picks[start:start + 10]) - 10 * share) <= 1


def test_half_alternates() -> None:
    assert [is_retrieval(i, 0.5) for i in range(6)] == [False, True, False, True, False, True]


@pytest.mark.parametrize("target", ["mix:1.5", "mix:-0.1", "retrive"])
def test_unknown_or_out_of_range_targets_are_refused(target: str) -> None:
    with pytest.raises(ValueError):
        make_request(target, ["q"])
