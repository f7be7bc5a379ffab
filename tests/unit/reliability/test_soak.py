"""The soak's analysis (``deployments/reliability/soak.py``) and the process roles
(``procs.py``) on hand-made samples: no stack."""

from __future__ import annotations

import pytest

from deployments.reliability import soak
from deployments.reliability.procs import Sample, role_of
from deployments.reliability.soak import MIB, Bounds


@pytest.mark.parametrize(("name", "cmdline", "role"), [
    ("ray::ServeRepli", ["ray::ServeReplica:ragserve:search"], "ServeReplica:ragserve:search"),
    ("ray::ServeRepli", ["ray::ServeReplica:ragserve:generator.handle_request_streaming"],
     "ServeReplica:ragserve:generator"),
    ("ray::ServeContr", ["ray::ServeController.listen_for_change   "], "ServeController"),
    ("ray::ProxyActor", ["ray::ProxyActor"], "ProxyActor"),
    ("ray::IDLE", ["ray::IDLE"], "IDLE"),
    ("VLLM::EngineCor", ["VLLM::EngineCore"], "vllm:EngineCore"),
    ("VLLM::Worker", ["VLLM::Worker"], "vllm:Worker"),
    ("milvus-lite", ["/venv/bin/python", "/venv/bin/milvus-lite", "server", "--data-dir", "d", "--port", "1"],
     "milvus-lite"),
    ("raylet", ["/venv/lib/ray/core/src/ray/raylet/raylet", "--raylet_socket_name=x"], "ray:raylet"),
    ("python", ["/venv/bin/python", "-u", "/venv/lib/ray/_private/log_monitor.py", "--x"], "ray:log_monitor.py"),
])
def test_roles_come_from_ray_process_titles_and_command_lines(name: str, cmdline: list[str], role: str) -> None:
    assert role_of(name, cmdline) == role


def test_slope_is_least_squares_per_hour() -> None:
    assert soak.slope_per_h([(0, 100.0), (1800, 110.0), (3600, 120.0)]) == pytest.approx(20.0)
    assert soak.slope_per_h([(0, 100.0), (60, 130.0), (120, 100.0)]) == pytest.approx(0.0)
    assert soak.slope_per_h([(5, 1.0)]) == 0.0


def _series(role: str, pid: int, mib: list[float], step_s: float = 600.0) -> list[Sample]:
    return [Sample(i * step_s, pid, role, int(m * MIB), 30) for i, m in enumerate(mib)]


def test_trends_flag_growth_past_the_larger_bound_and_fd_growth() -> None:
    under = (_series("ServeReplica:ragserve:ingress", 11, [300, 310, 320, 330])  # +60 MiB/h: within 64
             + _series("vllm:EngineCore", 12, [4000, 4100, 4200, 4300])  # +600 MiB/h > 5% of 4150
             + _series("ServeController", 13, [200, 250, 300, 350]))  # +300 MiB/h > 64
    baseline = [Sample(0, 11, "ServeReplica:ragserve:ingress", 0, 40), Sample(0, 12, "vllm:EngineCore", 0, 50),
                Sample(0, 13, "ServeController", 0, 60)]
    final = [Sample(9, 11, "ServeReplica:ragserve:ingress", 0, 56), Sample(9, 12, "vllm:EngineCore", 0, 51)]
    rows = {r["pid"]: r for r in soak.trends(under, baseline, final, Bounds(rss_mib_per_h=64, fds=16))}
    assert [r["pid"] for r in soak.trends(under, baseline, final, Bounds())] == [12, 11, 13]  # largest median RSS first
    assert rows[11]["rss_slope_mib_per_h"] == pytest.approx(60) and rows[11]["rss_ok"]
    assert rows[11]["fd_growth"] == 16 and rows[11]["fds_ok"]
    assert rows[12]["rss_bound_mib_per_h"] == pytest.approx(207.5) and not rows[12]["rss_ok"]
    assert rows[12]["fd_growth"] == 1
    assert not rows[13]["rss_ok"] and rows[13]["fd_growth"] is None and not rows[13]["whole_run"]
    rows = {r["pid"]: r for r in soak.trends(under, baseline, final, Bounds(fds=15))}
    assert not rows[11]["fds_ok"]


def test_report_lists_every_violation_and_a_leaked_stream() -> None:
    under = _series("ServeController", 13, [200, 250, 300, 350])
    run = soak.SoakRun(baseline=[Sample(0, 13, "ServeController", 0, 10)], under_load=under,
                       final=[Sample(9, 13, "ServeController", 0, 40)], results=[], engine_sequences_after=2,
                       load_start=0.0)
    rep = soak.report(run, Bounds(), {})
    assert len(rep["violations"]) == 3
    assert "leaked streams" in rep["violations"][-1]
    assert "**over**" in soak.markdown(rep)
    clean = soak.report(soak.SoakRun([Sample(0, 1, "x", 0, 10)], _series("x", 1, [10, 10]),
                                     [Sample(9, 1, "x", 0, 10)], [], 0, 0.0), Bounds(), {})
    assert clean["violations"] == []


def test_the_trend_leaves_out_the_first_fifth_of_the_load() -> None:
    warming = _series("ServeReplica:ragserve:ingress", 11, [200, 300, 300, 300, 300])  # a cache filled first
    row = soak.trends(warming, [], [], Bounds())[0]
    assert row["rss_slope_mib_per_h"] == 0.0 and row["rss_ok"]
