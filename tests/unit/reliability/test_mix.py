"""The drills' load mix (``deployments/reliability/mix.py``): parsing, kinds, outcomes."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from deployments.reliability.mix import Mix, Result


def test_parse_weights_and_draw_kinds_in_proportion() -> None:
    mix = Mix.parse("retrieve=2, stream=1,write=0", max_tokens=8)
    assert dict(mix.weights) == {"retrieve": 2.0, "stream": 1.0, "write": 0.0} and mix.max_tokens == 8
    rng = random.Random(0)
    drawn = Counter(mix.kind(rng) for _ in range(3000))
    assert set(drawn) == {"retrieve", "stream"}
    assert 1.8 < drawn["retrieve"] / drawn["stream"] < 2.2


@pytest.mark.parametrize("text", ["retrieve=1,chat=1", "retrieve=0"])
def test_unknown_kinds_or_no_weight_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        Mix.parse(text)


def test_a_result_is_ok_only_as_a_200_without_an_error_and_says_how_it_failed() -> None:
    assert Result("retrieve", 0, 1, 200).ok
    assert not Result("stream", 0, 1, 200, error="stream_cut").ok
    assert Result("stream", 0, 1, 200, error="stream_cut").failure == "stream_cut"
    assert Result("query", 0, 1, 0, error="ConnectError").failure == "ConnectError"
    assert Result("query", 0, 2.5, 503).failure == "503" and Result("query", 0, 2.5, 503).latency == 2.5
