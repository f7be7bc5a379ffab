"""The chaos matrix's faults, rows and verdicts (``deployments/reliability/chaos.py``,
``faults.py``) on hand-made windows and results: no cluster."""

from __future__ import annotations

import pytest

from deployments.config import parse_app_config
from deployments.reliability import chaos
from deployments.reliability.faults import Fault, Killed, matrix, select
from deployments.reliability.mix import Load, Mix, Result


def test_matrix_kills_a_replica_of_every_deployed_stage_then_the_platform_and_the_node_last() -> None:
    names = [f.name for f in matrix(parse_app_config({}))]
    assert names == ["ingress", "preprocess", "encoder", "search", "generator", "controller", "proxy", "milvus",
                     "worker-node"]
    with_rerank = [f.name for f in matrix(parse_app_config({"reranker": {"enabled": True}}))]
    assert with_rerank.index("rerank") == with_rerank.index("search") + 1


def test_select_keeps_matrix_order_and_names_unknown_faults() -> None:
    faults = matrix(parse_app_config({}))
    assert [f.name for f in select(faults, "milvus, search")] == ["search", "milvus"]
    assert select(faults, None) == faults
    with pytest.raises(ValueError, match="gpu-node"):
        select(faults, "search,gpu-node")


def _window(start: float = 0.0, kill: float = 10.0, whole: float | None = 30.0, end: float = 40.0) -> chaos.Window:
    return chaos.Window(Fault("search", "replica", "search"), start, Killed("pid 7", 7, kill), whole, end)


def test_a_row_counts_failures_by_status_shape_hangs_and_cut_streams() -> None:
    results = [
        Result("retrieve", 1.0, 1.1, 200),
        Result("retrieve", 11.0, 11.2, 503, shaped=True, retry_after=True),
        Result("retrieve", 12.0, 12.1, 500, shaped=False),  # a proxy's plain-text 500
        Result("query", 12.5, 13.0, 0, error="ConnectError", detail="refused"),
        Result("stream", 13.0, 20.0, 200, error="stream_error:service_unavailable"),
        Result("stream", 14.0, 15.0, 200, error="stream_cut"),
        Result("query", 15.0, 75.0, 0, error="hung"),
        Result("retrieve", 16.0, 16.3, 200), Result("query", 17.0, 19.0, 200), Result("stream", 18.0, 21.5, 200),
        Result("retrieve", 45.0, 45.1, 500),  # after the window: not counted
    ]
    row = chaos.summarize(_window(), results)
    assert row["requests"] == 10 and row["failed"] == 6
    assert row["failed_by"] == {"500": 1, "503": 1, "ConnectError": 1, "hung": 1, "stream_cut": 1,
                                "stream_error:service_unavailable": 1}
    assert row["not_in_error_shape"] == 1 and row["no_response"] == 1 and row["hung"] == 1
    assert (row["streams"], row["streams_cut"], row["streams_in_band_error"]) == (3, 1, 1)
    assert row["first_success_after_kill_s"] == {"query": 9.0, "retrieve": 6.3, "stream": 11.5}
    assert row["recovered_s"] == 11.5  # every kind failed once
    assert row["rejected_with_retry_after"] == 1
    assert row["last_failure_after_kill_s"] == 65.0
    assert row["whole_again_s"] == 20.0
    assert (row["slowest_s"], row["slowest_kind"]) == (60.0, "query")
    assert chaos.verdict(row, _window().fault) == ["1 hung", "1 streams cut", "1 without a response",
                                                  "1 errors not in the one shape"]
    ingress = Fault("ingress", "replica", "ingress")
    assert ingress.holds_connections and chaos.verdict(row, ingress) == ["1 hung"]
    assert row["examples"]["500"] == "" and row["examples"]["ConnectError"] == "refused"


def test_a_clean_fault_passes_and_a_kind_that_never_recovered_has_no_time() -> None:
    results = [Result("retrieve", 11.0, 11.1, 200), Result("query", 12.0, 12.2, 503)]
    row = chaos.summarize(_window(), results)
    assert row["first_success_after_kill_s"] == {"query": None, "retrieve": 1.1}
    assert row["recovered_s"] == "never"  # the query failed and did not succeed again
    assert chaos.summarize(_window(), results[:1])["recovered_s"] is None  # nothing failed
    assert chaos.verdict(row, _window().fault) == []
    assert chaos.verdict(chaos.summarize(_window(whole=None), results), _window().fault) == ["not whole again"]


def test_a_fault_that_could_not_be_injected_fails_and_shows_in_the_table() -> None:
    w = chaos.Window(Fault("milvus", "milvus"), 0.0, None, None, 5.0, error="no milvus-lite server")
    row = chaos.summarize(w, [])
    assert chaos.verdict(row, w.fault) == ["not injected: no milvus-lite server"]
    table = chaos.markdown([row, chaos.summarize(_window(), [Result("retrieve", 11.0, 11.1, 200)])])
    assert "not injected: no milvus-lite server" in table
    assert table.count("\n") == 3 and "| search | 1 | 0 |" in table


def test_the_window_stays_open_until_every_kind_succeeded_after_the_kill() -> None:
    load = Load("http://127.0.0.1:1", Mix({"retrieve": 2, "query": 1}), rate=1.0, questions=["q"])
    load.results += [Result("query", 5.0, 6.0, 200), Result("retrieve", 11.0, 11.1, 200),
                     Result("query", 12.0, 13.0, 503)]
    # Only a query before the kill succeeded: not every kind yet, so it waits until the deadline.
    assert chaos.settle_until_every_kind_ok(load, kill=10.0, deadline=0.0, poll_s=0.0) is False
    load.results.append(Result("query", 14.0, 15.0, 200))
    assert chaos.settle_until_every_kind_ok(load, kill=10.0, deadline=float("inf"), poll_s=0.0) is True
