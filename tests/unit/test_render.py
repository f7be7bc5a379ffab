"""``ragserve render``: one loop renders every generated file relative to ``--root`` and
``--check`` names what is stale; the renderers follow the stage registry (a toy stage with its own
config slice is sized, alerted on and given a dashboard row without touching the renderers)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field

from deployments import stages
from deployments.cli import main
from deployments.config import ActorResources, AppConfig, AutoscalingOptions, DeploymentOptions
from deployments.render import TARGETS, k8s, monitoring, render_all, stale_files
from deployments.render.capacity import plan_groups
from deployments.stages import Stage

REPO = Path(__file__).resolve().parents[2]
#: What a checkout needs for the renderers to read their sources.
SOURCES = ("cluster/serve_config.yaml", "cluster/serve_config.prod.yaml", "cluster/serve_config.cpu-dev.yaml",
           "pyproject.toml")


@pytest.fixture(autouse=True)
def _cli_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ragserve``'s main() sets HF_HUB_OFFLINE for its process: keep it out of the other tests."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _sources_only(tmp_path: Path) -> Path:
    for rel in SOURCES:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, tmp_path / rel)
    return tmp_path


def test_every_generated_file_of_the_checkout_is_current(capsys: pytest.CaptureFixture[str]) -> None:
    assert stale_files(render_all(REPO), REPO) == []
    assert main(["render", "--check", "--root", str(REPO)]) == 0
    assert "up to date" in capsys.readouterr().out


def test_targets_cover_monitoring_k8s_and_the_api_document() -> None:
    out = render_all(REPO)
    assert set(out) == {p for t in TARGETS for p in t(REPO)}
    assert {p.split("/")[0] for p in out} == {"cluster", "k8s", "docs"}
    assert [p for p in out if p.startswith("docs/")] == ["docs/openapi.json"]
    assert {p for p in out if p.startswith("cluster/")} == set(monitoring.generate(REPO))


def test_render_writes_under_root_and_check_names_stale_files(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    root = _sources_only(tmp_path)
    assert main(["render", "--check", "--root", str(root)]) == 1  # nothing rendered yet
    assert main(["render", "--root", str(root)]) == 0
    assert main(["render", "--check", "--root", str(root)]) == 0
    target = root / "k8s/base/rayservice.yaml"
    target.write_text(target.read_text().replace("maxReplicas: 4", "maxReplicas: 3"))
    (root / "cluster/monitoring/rules/alerts.yml").unlink()
    capsys.readouterr()
    assert main(["render", "--check", "--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert "stale: k8s/base/rayservice.yaml" in err and "-      maxReplicas: 3" in err
    assert "stale: cluster/monitoring/rules/alerts.yml" in err and "2 stale file(s)" in err


def test_render_reads_the_root_not_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _sources_only(tmp_path)
    prod = root / "cluster/serve_config.prod.yaml"
    prod.write_text(prod.read_text().replace("image: ragserve-cpu:0.1.0", "image: example.org/other:1"))
    monkeypatch.chdir(root)  # --root defaults to the current directory
    assert main(["render"]) == 0
    assert "image: example.org/other:1" in (root / "k8s/base/rayservice.yaml").read_text()
    assert "example.org/other" not in (REPO / "k8s/base/rayservice.yaml").read_text()


def test_render_refuses_a_directory_that_is_not_a_checkout(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "--root", str(tmp_path)]) == 2
    assert "not a ragserve checkout" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_invalid_sources_exit_2_naming_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _sources_only(tmp_path)
    prod = root / "cluster/serve_config.prod.yaml"
    prod.write_text(prod.read_text().replace("max_num_seqs: 64", "max_num_seqs: 0"))
    assert main(["render", "--root", str(root)]) == 2
    assert "generator.max_num_seqs" in capsys.readouterr().err


# --------------------------------------------------------------------------- the registry
class ToyConfig(BaseModel):
    """A stand-in config slice: an enabled flag and Serve options, like the rerank stage's."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    enabled: bool = Field(False, description="Deploy the toy stage.")
    deployment: DeploymentOptions = Field(default_factory=DeploymentOptions, description="Serve options.")


class ToyAppConfig(AppConfig):
    """An AppConfig carrying one more stage's slice."""

    toy: ToyConfig = Field(default_factory=ToyConfig, description="A toy stage.")


TOY = Stage("toy", "toy", "tests.toy:Toy", optional=True, p99_alert_s=0.5)
REGISTRY = (*stages.STAGES, TOY, stages.INGRESS)


def _toy_cfg(enabled: bool) -> ToyAppConfig:
    _, base, _ = k8s.merged_serve_config(REPO / "cluster/serve_config.prod.yaml", REPO)
    toy = ToyConfig(enabled=enabled, deployment=DeploymentOptions(
        resources=ActorResources(num_cpus=4), autoscaling=AutoscalingOptions(min_replicas=2, max_replicas=6)))
    return ToyAppConfig(**dict(base), toy=toy)


def test_a_registered_stage_is_sized_into_the_cpu_workers() -> None:
    _, _, overlay = k8s.merged_serve_config(REPO / "cluster/serve_config.prod.yaml", REPO)
    shape = overlay.kubernetes
    gpu = (shape.gpu_workers.gpus, shape.gpu_workers.cpus)
    without = plan_groups(_toy_cfg(False), shape.cpu_workers.cpus, gpu, REGISTRY)["cpu-workers"][0]
    assert without == plan_groups(_toy_cfg(False), shape.cpu_workers.cpus, gpu)["cpu-workers"][0]
    with_toy = plan_groups(_toy_cfg(True), shape.cpu_workers.cpus, gpu, REGISTRY)["cpu-workers"][0]
    # 2 x 4 CPUs more at min, 6 x 4 at max: more pods either way.
    assert with_toy.min_pods > without.min_pods and with_toy.max_pods > without.max_pods
    serve, _, _ = k8s.merged_serve_config(REPO / "cluster/serve_config.prod.yaml", REPO)
    spec = k8s.rayservice_spec(serve, _toy_cfg(True), shape, REPO, REGISTRY)
    groups = {g["groupName"]: g for g in spec["rayClusterConfig"]["workerGroupSpecs"]}
    assert groups["cpu-workers"]["maxReplicas"] == with_toy.max_pods
    # serveConfigV2 lists no deployments: the app builder applies each stage's options, so the
    # Serve config never repeats them.
    assert "deployments" not in yaml.safe_load(spec["serveConfigV2"])["applications"][0]


def test_a_registered_stage_gets_a_dashboard_row_and_alerts() -> None:
    dash = monitoring.dashboard(REGISTRY[:-1])
    rows = [p["title"] for p in dash["panels"] if p["type"] == "row"]
    assert rows[: len(REGISTRY) - 1] == [f"stage: {s.name}" for s in REGISTRY[:-1]]
    titles = {p["title"] for p in dash["panels"]}
    assert {f"toy: {k}" for k in ("latency", "throughput", "errors", "replicas")} <= titles
    alerts = monitoring.alert_rules(_toy_cfg(False), REGISTRY[:-1])["groups"][0]["rules"]
    toy = next(r for r in alerts if r.get("alert") == "RagStageLatencyP99HighToy")
    assert toy["expr"] == 'stage:rag_stage_latency_seconds:p99{stage="toy"} > 0.5'
    assert "stage: toy" not in {p["title"] for p in monitoring.dashboard()["panels"]}
