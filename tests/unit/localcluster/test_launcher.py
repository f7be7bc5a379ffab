"""Unit tests of the Ray cluster-launcher config ``cluster/launcher/ragserve.yaml`` (no cloud, no Ray).

The file is validated against the cluster-launcher JSON schema that ships inside the pinned ``ray``
package (``ray/autoscaler/ray-schema.json``, what ``ray up`` itself checks), and its node types are
checked against the KubeRay worker groups that :mod:`deployments.render.k8s` derives from the prod
config (:mod:`deployments.render.capacity`): same logical CPUs/GPUs per node, same min/max workers, a head with no app work.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml

from deployments.render import k8s as render
from deployments.render.capacity import plan_groups

REPO = Path(__file__).resolve().parents[3]

LAUNCHER = REPO / "cluster" / "launcher" / "ragserve.yaml"
PROD = REPO / "cluster" / "serve_config.prod.yaml"
GROUP_OF_TYPE = {"ray.worker.cpu": "cpu-workers", "ray.worker.gpu": "gpu-workers"}


@pytest.fixture(scope="module")
def launcher() -> dict[str, Any]:
    return yaml.safe_load(LAUNCHER.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def groups() -> dict[str, dict[str, Any]]:
    """The rendered RayService's worker groups, by name."""
    serve, cfg, overlay = render.merged_serve_config(PROD, REPO)
    spec = render.rayservice_spec(serve, cfg, overlay.kubernetes, REPO)
    return {g["groupName"]: g for g in spec["rayClusterConfig"]["workerGroupSpecs"]}


def test_valid_for_rays_own_schema(launcher: dict[str, Any]) -> None:
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(launcher, schema)  # additionalProperties: false at the top and per node type
    broken = {**launcher, "available_node_types": {
        **launcher["available_node_types"], "ray.worker.cpu": {**launcher["available_node_types"]["ray.worker.cpu"],
                                                               "resources": {"CPU": 7.5}}}}
    with pytest.raises(jsonschema.ValidationError):  # the schema is strict enough to catch a bad value
        jsonschema.validate(broken, schema)


def test_head_runs_no_app_work(launcher: dict[str, Any]) -> None:
    head_type = launcher["head_node_type"]
    assert launcher["available_node_types"][head_type]["resources"] == {"CPU": 0}
    start = " ".join(launcher["head_start_ray_commands"])
    assert "--num-cpus=0" in start and "--head" in start


def test_worker_types_match_the_k8s_worker_groups(launcher: dict[str, Any], groups: dict[str, Any]) -> None:
    types = {k: v for k, v in launcher["available_node_types"].items() if k != launcher["head_node_type"]}
    assert {GROUP_OF_TYPE[t] for t in types} == set(groups)
    for name, node_type in types.items():
        group = groups[GROUP_OF_TYPE[name]]
        params = group["rayStartParams"]
        want = {"CPU": int(params["num-cpus"])} | ({"GPU": int(params["num-gpus"])} if "num-gpus" in params else {})
        assert node_type["resources"] == want, name
        assert (node_type["min_workers"], node_type["max_workers"]) == (group["minReplicas"], group["maxReplicas"])
        assert node_type.get("idle_timeout_s") == group.get("idleTimeoutSeconds"), name
    assert launcher["max_workers"] == sum(t["max_workers"] for t in types.values())


def test_group_sizes_come_from_the_prod_config(groups: dict[str, Any]) -> None:
    # The comparison above is only as good as the groups: they are the capacity plan of the prod config.
    _, cfg, overlay = render.merged_serve_config(PROD, REPO)
    k8s = overlay.kubernetes
    plan = plan_groups(cfg, k8s.cpu_workers.cpus, (k8s.gpu_workers.gpus, k8s.gpu_workers.cpus))
    assert {g: (s.min_pods, s.max_pods, cpus) for g, (s, cpus) in plan.items()} == {
        g: (v["minReplicas"], v["maxReplicas"], int(v["rayStartParams"]["num-cpus"])) for g, v in groups.items()}


def test_gpu_nodes_install_the_gpu_extra_and_cpu_nodes_do_not(launcher: dict[str, Any]) -> None:
    types = launcher["available_node_types"]
    assert any("[gpu]" in c for c in types["ray.worker.gpu"]["worker_setup_commands"])
    for cmds in (types["ray.worker.cpu"]["worker_setup_commands"], launcher["head_setup_commands"]):
        assert not any("[gpu]" in c for c in cmds) and any("[cpu]" in c for c in cmds)


def test_head_deploys_the_prod_serve_config(launcher: dict[str, Any], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The head's render command (run here, writing into a temp home) gives a valid prod Serve config,
    and the next command deploys that file."""
    from ray.serve.schema import ServeDeploySchema

    from deployments.config import parse_app_config

    cmds = launcher["head_start_ray_commands"]
    render_cmd = next(c for c in cmds if "merged_serve_config" in c)
    cd, run = render_cmd.split("&&", 1)
    assert cd.split() == ["cd", "~/ragserve"]
    python, flag, code = shlex.split(run)
    assert (python, flag) == ("python3", "-c") and "cluster/serve_config.prod.yaml" in code
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: tmp_path))
    exec(compile(code, "head_start_ray_commands", "exec"), {})  # noqa: S102 - the command of our own file
    written = tmp_path / "ragserve-serve-config.yaml"
    assert shlex.split(cmds[-1])[:2] == ["serve", "deploy"] and cmds[-1].endswith(f"~/{written.name}")
    serve = yaml.safe_load(written.read_text(encoding="utf-8"))
    ServeDeploySchema.model_validate(serve)
    cfg = parse_app_config(serve["applications"][0]["args"])
    assert cfg.search.milvus.uri == "MILVUS_URI"  # the placeholder the file documents
    # The prod overlay was merged: GPU generator, a proxy on every node, reachable from outside the VM.
    assert cfg.generator.deployment.resources.num_gpus == 1
    assert serve["proxy_location"] == "EveryNode" and serve["http_options"]["host"] == "0.0.0.0"


def test_every_node_gets_rays_node_settings_before_ray_starts(launcher: dict[str, Any]) -> None:
    # The Serve proxy (on every node) reads its middleware hook from its own environment.
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in launcher[key] if "ray start" in c)
        assert start.index('eval "$(python -m deployments.envs)"') < start.index("ray start"), key
