"""The engine is built from the generator's config: what reaches vLLM's ``AsyncEngineArgs``.

vLLM itself is replaced by stand-ins in ``sys.modules`` (importing it takes seconds and starting
an engine far longer); what is checked is this project's wiring, not vLLM.
"""

from __future__ import annotations

import os
import sys
import types
from typing import Any

import pytest

from deployments.config import GeneratorConfig
from deployments.generator.deployment import build_engine


@pytest.fixture
def engine_args(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Capture the keyword arguments ``build_engine`` gives ``AsyncEngineArgs``."""
    seen: dict[str, Any] = {}

    class AsyncLLM:
        @classmethod
        def from_engine_args(cls, args: dict[str, Any], stat_loggers: Any = None) -> str:
            return "engine"

    def fake_module(name: str, **attrs: Any) -> None:
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(**attrs))

    fake_module("vllm", AsyncEngineArgs=lambda **kw: seen.update(kw) or kw)
    fake_module("vllm.v1.engine.async_llm", AsyncLLM=AsyncLLM)
    fake_module("vllm.v1.metrics.ray_wrappers", RayPrometheusStatLogger=object)
    # build_engine exports the engine's variables for the processes it spawns: keep them in this test.
    monkeypatch.setattr(os, "environ", dict(os.environ))
    return seen


def test_stream_interval_reaches_the_engine(engine_args: dict[str, Any]) -> None:
    engine, _ = build_engine(GeneratorConfig(stream_interval=4), ray_metrics=False)
    assert engine == "engine"
    assert engine_args["stream_interval"] == 4


def test_stream_interval_default_sends_every_token(engine_args: dict[str, Any]) -> None:
    build_engine(GeneratorConfig(), ray_metrics=False)
    assert engine_args["stream_interval"] == 1


def test_stream_interval_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="stream_interval"):
        GeneratorConfig(stream_interval=0)
