"""Which way ``ragserve ingest`` takes (deployments/ingest/route.py): the batch it counts, and the
decision from what it found (a server, ready or not, writable or not, its Ray cluster or none)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deployments.config import AppConfig, IngestConfig, IngressConfig
from deployments.errors import ConfigError
from deployments.ingest import sources
from deployments.ingest.route import Batch, Server, api_refusal, decide, estimate

CFG = AppConfig(ingest=IngestConfig(api_max_documents=100, max_file_bytes=10_000),
                ingress=IngressConfig(max_body_bytes=1000))
UP = Server("http://127.0.0.1:8000", ready=True, writable=True, ray_address="127.0.0.1:6379", dim=384)
SMALL, LARGE = Batch(24, 200), Batch(2000, 200)


# --------------------------------------------------------------------------- counting the batch
def test_estimate_counts_files_and_jsonl_lines(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# A\n\nalpha\n")
    (tmp_path / "b.txt").write_text("b" * 300)
    lines = [json.dumps({"id": f"j{i}", "text": "x" * (10 * i)}) for i in range(1, 6)]
    (tmp_path / "many.jsonl").write_text("\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:]) + "\n")
    (tmp_path / "huge.txt").write_text("h" * 20_000)  # over max_file_bytes: skipped, not counted
    (tmp_path / "blank.jsonl").write_text("\n\n")  # no documents
    batch = estimate(sources.list_files([tmp_path]), CFG.ingest)
    assert batch == Batch(documents=2 + 5, largest_bytes=300)


def test_estimate_takes_the_longest_jsonl_line_as_a_document(tmp_path: Path) -> None:
    long_line = json.dumps({"id": "big", "text": "y" * 800})
    (tmp_path / "one.jsonl").write_text(json.dumps({"id": "s", "text": "short"}) + "\n" + long_line + "\n")
    assert estimate(sources.list_files([tmp_path]), CFG.ingest) == Batch(2, len(long_line))


# --------------------------------------------------------------------------- the API's refusals
@pytest.mark.parametrize(("server", "batch", "reason"), [
    (None, SMALL, "no ragserve server answers"),
    (Server("http://h:1", ready=False, writable=True), SMALL, "not ready"),
    (Server("http://h:1", ready=True, writable=False), SMALL, "RAGSERVE_API_KEY is not set"),
    (UP, Batch(1, 501), "too large for the server's request body limit"),
])
def test_api_refusals(server: Server | None, batch: Batch, reason: str) -> None:
    assert reason in api_refusal(server, batch, CFG.ingress.max_body_bytes)


def test_half_the_body_limit_is_still_accepted() -> None:
    assert api_refusal(UP, Batch(1, 500), CFG.ingress.max_body_bytes) is None


# --------------------------------------------------------------------------- the decision
def test_explicit_flags_win_over_a_running_server() -> None:
    assert decide(SMALL, UP, CFG, local=True).kind == "local"
    way = decide(SMALL, UP, CFG, address="ray://head:10001")
    assert (way.kind, way.address) == ("join", "ray://head:10001")
    assert decide(LARGE, UP, CFG, via="api").kind == "api"
    way = decide(SMALL, UP, CFG, via="cluster")
    assert (way.kind, way.address) == ("join", UP.ray_address)


def test_next_to_a_server_the_batch_size_decides() -> None:
    small = decide(SMALL, UP, CFG)
    assert small.kind == "api" and "24 documents <= ingest.api_max_documents (100)" in small.reason
    assert decide(Batch(100, 10), UP, CFG).kind == "api"  # the threshold itself is still small
    large = decide(Batch(101, 10), UP, CFG)
    assert (large.kind, large.address) == ("join", UP.ray_address)
    assert "101 documents > ingest.api_max_documents (100)" in large.reason


def test_a_zero_threshold_always_joins() -> None:
    cfg = CFG.model_copy(update={"ingest": CFG.ingest.model_copy(update={"api_max_documents": 0})})
    assert decide(Batch(1, 10), UP, cfg).kind == "join"


def test_without_a_server_a_ray_of_its_own_starts() -> None:
    way = decide(SMALL, None, CFG)
    assert way.kind == "start" and way.address is None and "no ragserve server answers" in way.reason


@pytest.mark.parametrize("server", [Server(UP.url, ready=False, writable=True, ray_address=UP.ray_address),
                                    Server(UP.url, ready=True, writable=False, ray_address=UP.ray_address)])
def test_a_small_batch_the_api_cannot_take_joins_the_cluster(server: Server) -> None:
    way = decide(SMALL, server, CFG)
    assert (way.kind, way.address) == ("join", UP.ray_address)


def test_a_document_too_large_for_a_request_joins_the_cluster() -> None:
    way = decide(Batch(2, 900), UP, CFG)
    assert way.kind == "join" and "too large" in way.reason


def test_without_the_servers_ray_any_batch_goes_through_the_api() -> None:
    remote = Server(UP.url, ready=True, writable=True, ray_address=None)
    way = decide(LARGE, remote, CFG)
    assert way.kind == "api" and "Ray cluster was not found" in way.reason
    with pytest.raises(ConfigError, match="--via cluster: the Ray cluster serving .* was not found"):
        decide(LARGE, remote, CFG, via="cluster")


def test_neither_api_nor_cluster_falls_back_to_a_ray_of_its_own() -> None:
    way = decide(LARGE, Server(UP.url, ready=False, writable=True), CFG)
    assert way.kind == "start" and "not ready" in way.reason


def test_a_full_cluster_sends_the_batch_through_the_api_or_fails() -> None:
    way = decide(LARGE, UP, CFG, cluster_full=True)
    assert way.kind == "api" and "no room for the pipeline" in way.reason
    with pytest.raises(ConfigError, match="no CPUs free beyond what its replicas may claim"):
        decide(LARGE, Server(UP.url, ready=False, writable=True, ray_address=UP.ray_address), CFG, cluster_full=True)
    with pytest.raises(ConfigError, match="--via cluster: .*no CPUs free"):
        decide(LARGE, UP, CFG, via="cluster", cluster_full=True)


@pytest.mark.parametrize(("via", "server", "message"), [
    ("api", None, "--via api: no ragserve server answers"),
    ("api", Server(UP.url, ready=False, writable=True), "--via api: the server at .* is not ready"),
    ("cluster", None, "--via cluster: no ragserve server answers"),
])
def test_a_forced_way_that_is_not_open_is_an_error(via: str, server: Server | None, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        decide(SMALL, server, CFG, via=via)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- another live encoder
TUNED = Server(UP.url, ready=True, writable=True, ray_address=UP.ray_address, dim=384, encoder="v3")


def test_a_server_with_another_live_encoder_takes_the_batch_through_its_api() -> None:
    # The pipeline would embed with the config's (untuned) encoder; the API writes the live one's copy.
    route = decide(LARGE, TUNED, CFG)
    assert route.kind == "api" and "live encoder (v3) is not the config's (untuned" in route.reason
    assert decide(LARGE, Server(**{**vars(TUNED), "encoder": ""}), CFG).kind == "join"  # the same encoder


def test_another_live_encoder_refuses_the_cluster_way() -> None:
    with pytest.raises(ConfigError, match="--via cluster: the server's live encoder"):
        decide(LARGE, TUNED, CFG, via="cluster")
    big = Batch(5, 900)  # over the API's body share too: no way left
    with pytest.raises(ConfigError, match="and its API cannot take the batch"):
        decide(big, TUNED, CFG)
