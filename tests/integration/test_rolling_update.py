"""A changed config deployed while clients query is taken up with zero failed requests.

Three updates of the running app, each while three sequential clients keep asking (retrieval,
a generated answer, a streamed answer): a new generator setting, a scaled stage (preprocess
1 -> 2 replicas) with a new encoder backend (torch <-> openvino), and back. Any change of the application's ``args`` gives every deployment a
new code version in Ray Serve (the version hashes the args), so each update replaces every
stage, the vLLM engine included; Serve starts each replacement before it stops the old replica
(``max_surge_percent``), so every request must succeed and every stream must end with its
``done`` event. The updates run at the shipped Milvus call timeout (the suite's stack uses a
shorter one so outage tests fail fast). No timing assertions: the measured durations are printed
for docs/reliability.md.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from deployments.app import build_app
from deployments.bench.sequential import SequentialClients
from deployments.client import iter_sse
from deployments.config import AppConfig, load_config, parse_app_config

pytestmark = pytest.mark.integration

SHIPPED_CONFIG = Path(__file__).resolve().parents[2] / "cluster" / "serve_config.yaml"
#: A raw prompt the greedy model keeps continuing, so a generation runs to its token limit.
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"
#: The changed generator setting: the default token limit of a request that names none.
NEW_MAX_TOKENS = 24


class Load(SequentialClients):
    """Sequential clients of three kinds, each looping until :meth:`stop`; every outcome kept
    as (kind, seconds, failure)."""

    kinds = ("retrieve", "query", "stream")

    def ask(self, kind: str, client: httpx.Client) -> tuple[str, float, str | None]:
        t0 = time.monotonic()
        try:
            failure = getattr(self, f"_{kind}")(client)
        except httpx.HTTPError as e:
            failure = f"{type(e).__name__}: {e}"
        return kind, time.monotonic() - t0, failure

    @staticmethod
    def _retrieve(client: httpx.Client) -> str | None:
        r = client.post("/v1/retrieve", json={"question": "How tall is the Aurelia coast line lighthouse?"})
        return None if r.status_code == 200 and r.json()["sources"] else f"{r.status_code} {r.text[:300]}"

    @staticmethod
    def _query(client: httpx.Client) -> str | None:
        r = client.post("/v1/query", json={"question": "What does a standard ticket cost?", "max_tokens": 8})
        return None if r.status_code == 200 and r.json()["answer"] else f"{r.status_code} {r.text[:300]}"

    @staticmethod
    def _stream(client: httpx.Client) -> str | None:
        body = {"question": "Where is the tea garden?", "max_tokens": 8, "stream": True}
        with client.stream("POST", "/v1/query", json=body) as r:
            if r.status_code != 200:
                return f"{r.status_code} {r.read()[:300]!r}"
            kinds = [e for e, _ in iter_sse(r.iter_lines())]
        return None if kinds and kinds[-1] == "done" and "error" not in kinds else f"stream events {kinds}"


def _replicas(deployment: str) -> dict[str, str]:
    """replica id -> state of a deployment of the app, from the Serve controller."""
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()
    reps = details["applications"]["ragserve"]["deployments"][deployment]["replicas"]
    return {r["replica_id"]: r["state"] for r in reps}


def _running(deployment: str) -> set[str]:
    return {rid for rid, state in _replicas(deployment).items() if state == "RUNNING"}


def _encoder_backend() -> str:
    from ray import serve

    return serve.get_deployment_handle("encoder", "ragserve").info.remote().result(timeout_s=60)["backend"]


def _default_tokens(client: httpx.Client) -> int:
    """Tokens generated for a request that names no limit (the generator's configured default)."""
    r = client.post("/v1/generate", json={"prompt": COUNTING})
    assert r.status_code == 200, r.text
    return r.json()["usage"]["completion_tokens"]


def _changed(cfg: AppConfig, change) -> AppConfig:
    args = cfg.model_dump(mode="json")
    change(args)
    return parse_app_config(args)


def _update_under_load(url: str, cfg: AppConfig, label: str) -> None:
    """Deploy ``cfg`` (``serve.run`` returns when the app is RUNNING at the new version) while the
    load runs, let the old replicas drain under load too, and require zero failures."""
    from ray import serve

    load = Load(url).start()
    time.sleep(3)
    t0 = time.monotonic()
    serve.run(build_app(cfg), name="ragserve", route_prefix="/")
    took = time.monotonic() - t0
    time.sleep(5)
    outcomes = load.stop()
    failures = [(k, round(s, 2), f) for k, s, f in outcomes if f]
    slowest = {k: round(max((s for kk, s, _ in outcomes if kk == k), default=0), 2) for k in ("retrieve", "query",
                                                                                               "stream")}
    print(f"\n[update] {label}: deployed in {took:.1f} s under load; "
          f"{len(outcomes)} requests, {len(failures)} failed; slowest (s): {json.dumps(slowest)}")
    assert {k for k, _, _ in outcomes} == {"retrieve", "query", "stream"}
    assert not failures, failures


def test_config_updates_under_load_fail_no_request(stack) -> None:
    import ray

    # Room for the largest replacement (the generator's) next to the running replicas.
    need = stack.cfg.generator.deployment.resources.num_cpus
    assert ray.available_resources().get("CPU", 0) >= need, ray.available_resources()
    before = _running("generator")
    assert len(before) == 1 and _default_tokens(stack.client) > NEW_MAX_TOKENS  # the check below can fail
    shipped_timeout = load_config(SHIPPED_CONFIG).search.milvus.timeout_s
    base = _changed(stack.cfg, lambda a: a["search"]["milvus"].update(timeout_s=shipped_timeout))

    def new_generator_setting(args: dict) -> None:
        args["generator"]["sampling"]["max_tokens"] = NEW_MAX_TOKENS

    backend = stack.cfg.encoder.backend
    new_backend = "openvino" if backend == "torch" else "torch"

    def scaled(args: dict) -> None:
        new_generator_setting(args)
        args["preprocess"]["deployment"]["autoscaling"].update(min_replicas=2, max_replicas=2)
        args["encoder"].update(backend=new_backend, precision="fp32")

    try:
        _update_under_load(stack.url, _changed(base, new_generator_setting), "a new generator setting")
        after = _running("generator")
        assert len(after) == 1 and after != before, (before, after)  # the engine was replaced...
        assert _default_tokens(stack.client) <= NEW_MAX_TOKENS  # ... and runs the new setting

        _update_under_load(stack.url, _changed(base, scaled),
                           f"preprocess scaled to 2 replicas, the encoder on {new_backend}")
        assert len(_running("preprocess")) == 2 and _default_tokens(stack.client) <= NEW_MAX_TOKENS
        assert _encoder_backend() == f"{new_backend}/fp32"
    finally:
        _update_under_load(stack.url, base, "back to the shipped config")
    assert len(_running("preprocess")) == 1 and _default_tokens(stack.client) > NEW_MAX_TOKENS
    assert _encoder_backend().startswith(backend + "/")
