"""Unit tests of the Kubernetes deployment under ``k8s/`` (no cluster, no Ray runtime).

Covers (the render/check loop itself is tests/unit/test_render.py): the manifests rendered by
:mod:`deployments.render.k8s` are the expected set; each ``serveConfigV2`` parses back to the merged Serve config
(args valid for ``parse_app_config``, structure valid for Ray's ``ServeDeploySchema``); the overlay
merge and its error messages; the worker-group arithmetic of :mod:`deployments.render.capacity` (GPU capacity
check, any-fit CPU bound checked against simulated packings); and every manifest — each file under
``k8s/base`` and each object of each ``kubectl kustomize`` build — against its schema, strictly:
core kinds with ``kubernetes-validate``, custom resources (RayService, PodMonitor, ...) with
``jsonschema`` against their CRD's openAPIV3Schema made to reject unknown fields, plus references
(Secrets, ConfigMaps, PVCs, named ports) that must resolve inside each build; and security, on
each applied build: the API keys Secret is mounted where the serve config's ``auth.keys_file``
points, the NetworkPolicies select real pods and admit only what k8s/README.md lists (each
check also shown to fail on a broken copy), and the Ray dashboard is reachable through no
Ingress, LoadBalancer or NodePort.

CRD schemas come from ``<repo>/../shared/k8s-schemas`` and kustomize builds from ``kubectl``;
tests needing either skip with a message when it is absent.
"""

from __future__ import annotations

import functools
import json
import random
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployments import stages
from deployments.config import DeploymentOptions, load_config, parse_app_config
from deployments.errors import ConfigError
from deployments.render import capacity
from deployments.render import k8s as render
from deployments.render.overlay import KEYS_DIR

REPO = Path(__file__).resolve().parents[2]

SCHEMAS = REPO.parent / "shared" / "k8s-schemas"
K8S_VERSION = "1.30.0"
OVERLAYS = ("base", "overlays/gpu-prod", "overlays/cpu-dev")
ENVS = {env.name: env for env in render.ENVIRONMENTS}
# YAML under k8s/ that is not a manifest; each is checked another way (see test_every_yaml_is_covered).
PATCHES = {"k8s/overlays/cpu-dev/rayservice-patch.yaml", "k8s/overlays/cpu-dev/shrink.yaml",
           "k8s/overlays/cpu-dev/pvc-model-cache-patch.yaml"}


def _docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def _rendered_rayservice(env_name: str) -> dict[str, Any]:
    """The RayService of an environment: the base object, with the overlay's patch applied if any."""
    base = _docs(REPO / "k8s/base/rayservice.yaml")[0]
    env = ENVS[env_name]
    if env.as_patch:
        ops = {op["path"]: op["value"] for op in _docs(REPO / env.out_dir / "rayservice-patch.yaml")[0]}
        base = {**base, "spec": ops["/spec"]}
    return base


# --------------------------------------------------------------------------- renderer
def test_render_is_deterministic() -> None:
    first, second = render.render_all(REPO), render.render_all(REPO)
    assert first == second
    assert set(first) == {
        "k8s/base/rayservice.yaml", "k8s/base/serve_config.yaml", "k8s/base/pvc-model-cache.yaml",
        "k8s/overlays/gpu-prod/pdb.yaml", "k8s/overlays/gpu-prod/ingress.yaml",
        "k8s/overlays/gpu-prod/networkpolicy.yaml", "k8s/overlays/cpu-dev/networkpolicy.yaml",
        "k8s/overlays/cpu-dev/rayservice-patch.yaml", "k8s/overlays/cpu-dev/serve_config.yaml",
        "k8s/overlays/cpu-dev/pvc-model-cache-patch.yaml", "k8s/base/monitoring/podmonitor.yaml",
        "k8s/base/monitoring/prometheusrule.yaml", "k8s/base/monitoring/grafana-dashboard.yaml",
    }


def test_monitoring_resources_come_from_the_monitoring_generator() -> None:
    """The PrometheusRule holds exactly the cluster/monitoring rule groups, the ConfigMap the dashboard."""
    from deployments.render import monitoring

    out = render.render_all(REPO)
    rule = yaml.safe_load(out["k8s/base/monitoring/prometheusrule.yaml"])
    names = [g["name"] for g in rule["spec"]["groups"]]
    local = [g["name"] for f in ("recording.yml", "alerts.yml")
             for g in yaml.safe_load((REPO / "cluster/monitoring/rules" / f).read_text())["groups"]]
    assert names == local
    cm = yaml.safe_load(out["k8s/base/monitoring/grafana-dashboard.yaml"])
    assert json.loads(cm["data"]["ragserve-dashboard.json"]) == monitoring.dashboard()


@pytest.mark.parametrize("env_name", sorted(ENVS))
def test_serve_config_v2_is_the_merged_config(env_name: str) -> None:
    env = ENVS[env_name]
    serve, cfg, _ = render.merged_serve_config(REPO / env.overlay, REPO)
    embedded = yaml.safe_load(_rendered_rayservice(env_name)["spec"]["serveConfigV2"])
    assert embedded == serve
    assert parse_app_config(embedded["applications"][0]["args"]) == cfg
    assert embedded["applications"][0]["import_path"] == "deployments.app:app_builder"
    # The same config as a file for the CLI in the pods: a valid serve config YAML of its own.
    assert _docs(REPO / env.out_dir / "serve_config.yaml")[0] == serve
    assert load_config(REPO / env.out_dir / "serve_config.yaml") == cfg


def _unknown_keys(model: type, data: Any, path: str = "") -> list[str]:
    """Keys Ray's (lenient) Serve schema would silently ignore, recursively over its sub-models."""
    from pydantic import BaseModel

    if not isinstance(data, dict):
        return []
    found = []
    for key, value in data.items():
        if key not in model.model_fields:
            found.append(f"{path}{key}")
            continue
        ann = model.model_fields[key].annotation
        for sub in (ann, *getattr(ann, "__args__", ())):
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                items = value if isinstance(value, list) else [value]
                for item in items:
                    found += _unknown_keys(sub, item, f"{path}{key}.")
    return found


@pytest.mark.parametrize("env_name", sorted(ENVS))
def test_serve_config_v2_is_a_valid_ray_serve_config(env_name: str) -> None:
    schema = pytest.importorskip("ray.serve.schema", reason="ray[serve] not installed")
    embedded = yaml.safe_load(_rendered_rayservice(env_name)["spec"]["serveConfigV2"])
    schema.ServeDeploySchema.model_validate(embedded)
    assert _unknown_keys(schema.ServeDeploySchema, embedded) == []


def test_prod_overlay_scales_every_stage_on_its_own() -> None:
    serve, cfg, overlay = render.merged_serve_config(REPO / ENVS["prod"].overlay, REPO)
    for stage in stages.enabled(cfg):
        assert stage.config(cfg).deployment.autoscaling is not None, stage.name
    assert cfg.generator.deployment.resources.num_gpus == 1 and not cfg.generator.enforce_eager
    assert 0 < cfg.encoder.deployment.resources.num_cpus % 1 and cfg.encoder.device == "cpu"
    assert cfg.encoder.model == "sentence-transformers/all-MiniLM-L6-v2"
    assert "/" in cfg.generator.model and not cfg.generator.model.startswith("bundled:")
    assert cfg.search.milvus.uri == "http://milvus.ragserve.svc.cluster.local:19530"
    assert "HF_HUB_OFFLINE" not in serve["applications"][0]["runtime_env"]["env_vars"]
    assert overlay.kubernetes.gpu_workers is not None


def test_cpu_dev_overlay_has_no_gpu() -> None:
    _, cfg, overlay = render.merged_serve_config(REPO / ENVS["cpu-dev"].overlay, REPO)
    assert overlay.kubernetes.gpu_workers is None and overlay.kubernetes.image.startswith("ragserve-cpu:")
    assert cfg.generator.deployment.resources.num_gpus == 0 and cfg.generator.enforce_eager
    groups = _rendered_rayservice("cpu-dev")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert [g["groupName"] for g in groups] == ["cpu-workers"]


def test_merge_patch_follows_rfc_7386() -> None:
    target = {"a": {"b": 1, "c": [1, 2]}, "d": 4}
    patched = render.merge_patch(target, {"a": {"b": None, "c": [3], "e": {"f": 5}}, "d": None})
    assert patched == {"a": {"c": [3], "e": {"f": 5}}}
    assert target == {"a": {"b": 1, "c": [1, 2]}, "d": 4}  # inputs untouched


def _overlay(tmp_path: Path, **changes: Any) -> Path:
    data = render.merge_patch(yaml.safe_load((REPO / ENVS["prod"].overlay).read_text()), changes)
    path = tmp_path / "serve_config.test.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"args_overrides": {"encoder": {"max_batch_size": 0}}}, "encoder.max_batch_size"),
        ({"args_overrides": {"encodr": {}}}, "encodr"),
        ({"kubernetes": {"gpu_workers": {"gpu": 2}}}, "kubernetes.gpu_workers.gpu"),
        ({"serve_overrides": {"http_options": {"host": "127.0.0.1"}}}, "http_options.host must be 0.0.0.0"),
        ({"serve_overrides": {"proxy_location": "HeadOnly"}}, "proxy_location must be EveryNode"),
        ({"serve_overrides": {"applications": []}}, "application_overrides"),
        ({"args_overrides": {"auth": {"keys_file": "/tmp/keys.yaml"}}}, "args_overrides.auth.keys_file contradicts"),
        ({"args_overrides": {"auth": {"mode": "off"}}}, "args_overrides.auth.mode contradicts"),
        ({"kubernetes": {"api_keys": {"key": "../keys.yaml"}}}, "kubernetes.api_keys.key"),
    ],
)
def test_bad_overlays_are_rejected_by_name(tmp_path: Path, changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        render.merged_serve_config(_overlay(tmp_path, **changes), REPO)


def test_api_keys_set_the_auth_config_and_only_mode_off_runs_without(tmp_path: Path) -> None:
    path = _overlay(tmp_path, args_overrides={"auth": {"reload_interval_s": 30}})
    serve, cfg, overlay = render.merged_serve_config(path, REPO)
    assert overlay.kubernetes.api_keys is not None
    assert (cfg.auth.mode, cfg.auth.keys_file, cfg.auth.reload_interval_s) == ("keys", overlay.kubernetes.api_keys.path, 30)
    assert cfg.auth.keys_file == f"{KEYS_DIR}/keys.yaml" == "/etc/ragserve/keys/keys.yaml"
    data = yaml.safe_load((REPO / ENVS["prod"].overlay).read_text())
    data["kubernetes"]["api_keys"] = None  # no Secret: the app would be open on the pods' 0.0.0.0
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="refusing to serve on 0.0.0.0 without API keys.*kubernetes.api_keys"):
        render.merged_serve_config(path, REPO)
    data["args_overrides"]["auth"] = {"mode": "off"}  # open on purpose
    path.write_text(yaml.safe_dump(data))
    serve, cfg, overlay = render.merged_serve_config(path, REPO)
    assert cfg.auth.open and overlay.kubernetes.api_keys is None
    spec = render.rayservice_spec(serve, cfg, overlay.kubernetes, REPO)
    head = spec["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    assert [v["name"] for v in head["volumes"]] == ["model-cache", "serve-config"]
    assert all(m["name"] != "api-keys" for m in head["containers"][0]["volumeMounts"])


# --------------------------------------------------------------------------- capacity
def _gen(num_gpus: float, max_replicas: int, num_cpus: float = 4) -> DeploymentOptions:
    return DeploymentOptions(resources={"num_gpus": num_gpus, "num_cpus": num_cpus},
                             autoscaling={"min_replicas": 1, "max_replicas": max_replicas})


@pytest.mark.parametrize(
    ("num_gpus", "max_replicas", "gpus_per_pod", "max_pods"),
    [(1, 4, 1, 4), (1, 4, 2, 2), (0.5, 4, 1, 2), (0.5, 5, 1, 3), (0.75, 2, 1, 2), (2, 3, 4, 2)],
)
def test_gpu_capacity_accepts_enough_pods(num_gpus: float, max_replicas: int, gpus_per_pod: int,
                                          max_pods: int) -> None:
    gen = _gen(num_gpus, max_replicas)
    capacity.check_gpu_capacity(gen, gpus_per_pod, max_pods)
    assert capacity.gpu_pods_needed(gen, gpus_per_pod).max_pods == max_pods


@pytest.mark.parametrize(
    ("num_gpus", "max_replicas", "gpus_per_pod", "max_pods", "message"),
    [
        (1, 4, 1, 3, "max_replicas is 4"),
        (0.5, 5, 1, 2, "hold 4 generator replicas"),
        (0.75, 3, 1, 2, "hold 2 generator replicas"),  # 2.25 GPUs would fit, but replicas cannot straddle
        (2, 1, 1, 8, "needs 2.0 GPUs but a GPU pod has 1"),
        (0, 1, 1, 1, "needs no GPU"),
    ],
)
def test_gpu_capacity_rejects_too_few_pods(num_gpus: float, max_replicas: int, gpus_per_pod: int,
                                           max_pods: int, message: str) -> None:
    with pytest.raises(capacity.CapacityError, match=message):
        capacity.check_gpu_capacity(_gen(num_gpus, max_replicas), gpus_per_pod, max_pods)


def test_cpu_bounds() -> None:
    tenth = Fraction(1, 10)
    size = capacity.GroupSize
    assert capacity.cpu_pods_needed([tenth] * 79, 8) == size(1, 1)  # 7.9 exactly: no float drift
    assert capacity.cpu_pods_needed([Fraction(3, 2)] * 8 + [Fraction(1, 4)] * 6, 8) == size(2, 3)
    assert capacity.cpu_pods_needed([Fraction(4)] * 3, 4) == size(3, 3)
    assert capacity.cpu_pods_needed([], 8) == size(0, 0)
    with pytest.raises(capacity.CapacityError, match="needs 9.0 CPUs"):
        capacity.cpu_pods_needed([Fraction(9)], 8)


def test_cpu_upper_bound_holds_for_any_arrival_order() -> None:
    # Ray spreads replicas (worst fit); the autoscaler packs pending ones: all of them are any-fit.
    strategies = {
        "first": lambda fits, room: fits[0],
        "best": lambda fits, room: min(fits, key=room.__getitem__),
        "worst": lambda fits, room: max(fits, key=room.__getitem__),
    }
    rng = random.Random(7)
    for _ in range(300):
        cpus = rng.choice([2, 4, 8, 16])
        sizes = [Fraction(rng.choice([1, 2, 3, 5, 10, 15, 20, 40]), 10) for _ in range(rng.randint(1, 40))]
        sizes = [s for s in sizes if s <= cpus]
        bound = capacity.cpu_pods_needed(sizes, cpus).max_pods
        rng.shuffle(sizes)
        for name, choose in strategies.items():
            room: list[Fraction] = []
            for s in sizes:
                fits = [i for i, free in enumerate(room) if s <= free]
                if fits:
                    room[choose(fits, room)] -= s
                else:
                    room.append(cpus - s)
            assert len(room) <= bound, (name, cpus, sizes)


def test_placement_errors_name_the_stage() -> None:
    _, cfg, _ = render.merged_serve_config(REPO / ENVS["prod"].overlay, REPO)
    with pytest.raises(capacity.CapacityError, match="no gpu_workers"):
        capacity.plan_groups(cfg, 8, None)
    encoder = cfg.encoder.model_copy(update={"deployment": _gen(1, 2)})
    gpu_encoder = cfg.model_copy(update={"encoder": encoder})
    with pytest.raises(capacity.CapacityError, match="encoder: only the generator"):
        capacity.plan_groups(gpu_encoder, 8, (1, 8))
    with pytest.raises(capacity.CapacityError, match="whole number"):
        capacity.plan_groups(cfg, 8, (1, 2))  # 4 generator CPUs on a 2-CPU GPU pod


@pytest.mark.parametrize("env_name", sorted(ENVS))
def test_rendered_groups_hold_every_replica(env_name: str) -> None:
    _, cfg, _ = render.merged_serve_config(REPO / ENVS[env_name].overlay, REPO)
    cluster = _rendered_rayservice(env_name)["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert not any("gpu" in k for k in head["template"]["spec"]["containers"][0]["resources"]["limits"])
    assert cluster["enableInTreeAutoscaling"] and cluster["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    cpu_demand = sum(Fraction(str(s.config(cfg).deployment.resources.num_cpus)) *
                     capacity.replica_bounds(s.config(cfg).deployment)[1]
                     for s in stages.enabled(cfg) if s.config(cfg).deployment.resources.num_gpus == 0)
    cpu = groups["cpu-workers"]
    assert cpu["maxReplicas"] * int(cpu["rayStartParams"]["num-cpus"]) >= cpu_demand
    if "gpu-workers" in groups:
        gpu = groups["gpu-workers"]
        gpus = int(gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
        gen = cfg.generator.deployment
        capacity.check_gpu_capacity(gen, gpus, gpu["maxReplicas"])
        assert gpu["maxReplicas"] * gpus >= gen.autoscaling.max_replicas * gen.resources.num_gpus
        assert gpu["rayStartParams"]["num-cpus"] == str(int(gen.resources.num_cpus))
        assert gpu["template"]["spec"]["tolerations"]
    for group in groups.values():
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        probe = group["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]
        assert probe == {"path": "/-/healthz", "port": "serve"}


# --------------------------------------------------------------------------- manifests
def _strict_crd_schema(schema: Any) -> Any:
    """A CRD schema that rejects unknown fields, as the API server's pruning would drop them."""
    if isinstance(schema, list):
        return [_strict_crd_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict_crd_schema(v) for k, v in schema.items()}
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.cache
def _crd_validators() -> dict[tuple[str, str], Any]:
    """(apiVersion, kind) -> jsonschema validator, for every CRD version in the schema dir."""
    from jsonschema import Draft7Validator

    if not SCHEMAS.is_dir():
        pytest.skip(f"CRD schemas not found at {SCHEMAS} (the shared/ checkout next to the repo)")
    validators = {}
    for path in sorted(SCHEMAS.glob("*.yaml")):
        crd = _docs(path)[0]
        for version in crd["spec"]["versions"]:
            schema = _strict_crd_schema(version["schema"]["openAPIV3Schema"])
            key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
            validators[key] = Draft7Validator(schema)
    return validators


@functools.cache
def _object_meta_validator() -> Any:
    """Strict ObjectMeta from kubernetes-validate's definitions: CRD schemas leave metadata open."""
    import importlib.resources

    from jsonschema import Draft202012Validator

    pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (dev extra)")
    schemas = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    defs_file = schemas / f"v{K8S_VERSION}-local-strict" / "_definitions.json"
    defs = json.loads(defs_file.read_text(encoding="utf-8"))
    meta = "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    return Draft202012Validator({"$defs": defs["$defs"], "$ref": meta})


def _validate(doc: dict[str, Any]) -> None:
    """Raise unless ``doc`` is valid for its kind, unknown fields included."""
    group = doc["apiVersion"].split("/")[0] if "/" in doc["apiVersion"] else ""
    if "." in group and not group.endswith(".k8s.io"):  # a custom resource
        key = (doc["apiVersion"], doc["kind"])
        assert key in _crd_validators(), f"no CRD schema for {key} in {SCHEMAS}"
        _crd_validators()[key].validate(doc)
        _object_meta_validator().validate(doc["metadata"])
    else:
        kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (dev extra)")
        kv.validate(doc, K8S_VERSION, strict=True)


KUSTOMIZATIONS = ("k8s/base", "k8s/overlays/gpu-prod", "k8s/overlays/cpu-dev")


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    """(file, object) for every object in every manifest file under k8s/ (not patches or kustomizations)."""
    return [(str(path.relative_to(REPO)), doc)
            for path in sorted((REPO / "k8s").rglob("*.yaml")) if str(path.relative_to(REPO)) not in PATCHES
            for doc in _docs(path) if isinstance(doc, dict) and "kind" in doc and doc["kind"] != "Kustomization"]


@pytest.mark.parametrize("doc", [pytest.param(d, id=f"{p}:{d['kind']}/{d['metadata']['name']}")
                                 for p, d in _manifests()])
def test_every_manifest_validates(doc: dict[str, Any]) -> None:
    _validate(doc)


def test_every_yaml_is_covered() -> None:
    # A YAML under k8s/ is a kustomization, a validated manifest, a rendered serve config or a patch
    # whose result is validated in the kustomize builds; and each is listed by its directory's
    # kustomization (a rendered file nobody deploys would be a silent gap).
    manifests = {p for p, _ in _manifests()}
    listed: set[str] = set()
    for kdir in KUSTOMIZATIONS:
        k = _docs(REPO / kdir / "kustomization.yaml")[0]
        entries = [*k.get("resources", []), *(p["path"] for p in k.get("patches", []))]
        listed |= {f"{kdir}/{e}" for e in entries if not e.startswith("..")}
    for path in sorted((REPO / "k8s").rglob("*.y*ml")):
        rel = str(path.relative_to(REPO))
        if path.name in {"kustomization.yaml", "serve_config.yaml"}:
            continue
        assert rel in manifests or rel in PATCHES, f"{rel} is neither a validated manifest nor a known patch"
        assert rel in listed, f"{rel} is not listed by its directory's kustomization"


@functools.cache
def _build(overlay: str) -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed: kustomize builds not checked (apt-get install kubectl)")
    out = subprocess.run(["kubectl", "kustomize", str(REPO / "k8s" / overlay)],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kustomize_build_validates(overlay: str) -> None:
    docs = _build(overlay)
    assert len(docs) >= 10
    for doc in docs:
        assert doc["metadata"].get("namespace", "ragserve") == "ragserve" or doc["kind"] == "Namespace"
        try:
            _validate(doc)
        except Exception as err:
            raise AssertionError(f"{overlay}: {doc['kind']}/{doc['metadata']['name']}: {err}") from err


def _pod_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Pod templates, with the labels KubeRay adds to Ray pods (ray.io/node-type, ray.io/group)."""
    if doc["kind"] == "RayService":
        cluster = doc["spec"]["rayClusterConfig"]
        head = {**cluster["headGroupSpec"]["template"], "kuberay": {"ray.io/node-type": "head"}}
        workers = [{**g["template"], "kuberay": {"ray.io/node-type": "worker", "ray.io/group": g["groupName"]}}
                   for g in cluster["workerGroupSpecs"]]
        return [{**t, "metadata": {**t["metadata"], "labels": {**t["metadata"]["labels"], **t.pop("kuberay")}}}
                for t in [head, *workers]]
    return [doc["spec"]["template"]] if doc["kind"] in {"StatefulSet", "Deployment"} else []


def _keys_secrets() -> set[str]:
    """The API keys Secrets the environments mount (created by hand, so in no build)."""
    return {o.kubernetes.api_keys.secret for o in (render.merged_serve_config(REPO / e.overlay, REPO)[2]
                                                    for e in ENVS.values()) if o.kubernetes.api_keys}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_resolve_within_the_build(overlay: str) -> None:
    docs = _build(overlay)
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    secrets = {d["metadata"]["name"]: {**d.get("data", {}), **d.get("stringData", {})}
               for d in docs if d["kind"] == "Secret"}
    templates = [t for d in docs for t in _pod_specs(d)]
    for template in templates:
        for volume in template["spec"].get("volumes", []):
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in names
            if "persistentVolumeClaim" in volume:
                assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in names
            if "secret" in volume and not volume["secret"].get("optional"):
                # The API keys Secret is made by hand (never committed): the one exception, see
                # test_keys_secret_is_created_by_hand_as_the_readme_says.
                assert volume["secret"]["secretName"] in {*secrets, *_keys_secrets()}, (overlay, volume)
        for container in template["spec"]["containers"]:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref and not ref.get("optional"):
                    assert ref["key"] in secrets.get(ref["name"], {}), (overlay, ref)
    # Each PodMonitor's port is a named port of every pod template it selects.
    for monitor in (d for d in docs if d["kind"] == "PodMonitor"):
        wanted = monitor["spec"]["selector"]["matchLabels"].items()
        selected = [t for t in templates if wanted <= t["metadata"]["labels"].items()]
        assert selected, monitor["metadata"]["name"]
        for template in selected:
            ports = {p.get("name") for c in template["spec"]["containers"] for p in c.get("ports", [])}
            assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= ports


def test_overlays_differ_where_they_should() -> None:
    prod, dev = _build("overlays/gpu-prod"), _build("overlays/cpu-dev")
    pdbs = {o: sorted(d["metadata"]["name"] for d in docs if d["kind"] == "PodDisruptionBudget")
            for o, docs in (("prod", prod), ("dev", dev))}
    # prod keeps two CPU pods (a PDB) and one GPU pod (none); dev one of each kind (none).
    assert pdbs == {"prod": ["ragserve-cpu-workers"], "dev": []}
    rayservices = [next(d for d in docs if d["kind"] == "RayService") for docs in (prod, dev)]
    assert [r["metadata"]["annotations"]["ragserve/rendered-from"] for r in rayservices] == [
        ENVS["prod"].overlay, ENVS["cpu-dev"].overlay]
    assert rayservices[1]["spec"] == _rendered_rayservice("cpu-dev")["spec"]


def _head_container(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["spec"]["rayClusterConfig"].update(workerGroupSpec=[]),
        lambda d: _head_container(d).update(imagePullPolicyy="Always"),
        lambda d: d["metadata"].update(lables={}),
        lambda d: d["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].update(maxReplicas="many"),
    ],
    ids=["unknown-spec-field", "unknown-container-field", "unknown-metadata-field", "wrong-type"],
)
def test_validation_rejects_a_broken_rayservice(mutate: Any) -> None:
    doc = _docs(REPO / "k8s/base/rayservice.yaml")[0]
    _validate(doc)
    mutate(doc)
    with pytest.raises(Exception, match="unexpected|not of type"):
        _validate(doc)


def test_validation_rejects_broken_core_and_monitoring_kinds() -> None:
    statefulset = _docs(REPO / "k8s/base/milvus/statefulset.yaml")[0]
    statefulset["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    monitor = _docs(REPO / "k8s/base/monitoring/podmonitor.yaml")[0]
    monitor["spec"]["podMetricsEndpoints"][0]["portt"] = "metrics"
    for doc in (statefulset, monitor):
        with pytest.raises(Exception, match="unexpected"):
            _validate(doc)


# --------------------------------------------------------------------------- security
#: The overlays one applies, and the environment each is rendered from.
DEPLOYED = {"overlays/gpu-prod": "prod", "overlays/cpu-dev": "cpu-dev"}
#: Marks a peer that is every source (a rule without ``from``).
ANYONE = "anyone"


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"only matchLabels is checked here: {selector}"
    return selector.get("matchLabels", {}).items() <= labels.items()


def _container_ports(template: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for c in template["spec"]["containers"] for p in c.get("ports", [])]


def _port_matches(rule_port: dict[str, Any], port: dict[str, Any]) -> bool:
    return rule_port["port"] in (port.get("name"), port["containerPort"])


def _sources(docs: list[dict[str, Any]], template: dict[str, Any], port: dict[str, Any]) -> list[Any]:
    """Who may open ``port`` of the pods of ``template``: the peers of every rule of every
    NetworkPolicy selecting them that admits the port; [ANYONE] for a rule without ``from``.
    A pod no policy selects admits everyone (Kubernetes' default)."""
    labels = template["metadata"]["labels"]
    policies = [d for d in docs if d["kind"] == "NetworkPolicy" and _selects(d["spec"]["podSelector"], labels)]
    if not policies:
        return [ANYONE]
    found: list[Any] = []
    for policy in policies:
        assert policy["spec"]["policyTypes"] == ["Ingress"], policy["metadata"]["name"]
        for rule in policy["spec"].get("ingress", []):
            if "ports" in rule and not any(_port_matches(p, port) for p in rule["ports"]):
                continue
            found += rule.get("from", [ANYONE])
    return found


def _same_namespace_pods(peer: Any, templates: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The templates a peer of this namespace selects; None for a peer outside it (or everyone)."""
    if peer == ANYONE or "namespaceSelector" in peer or "ipBlock" in peer:
        return None
    return [t for t in templates if _selects(peer["podSelector"], t["metadata"]["labels"])]


def _is_ray(template: dict[str, Any]) -> bool:
    return "ray.io/node-type" in template["metadata"]["labels"]  # set by _pod_specs for RayService pods


def _check_network_policies(docs: list[dict[str, Any]], env_name: str) -> None:
    """Raise AssertionError unless the build's NetworkPolicies do what k8s/README.md says."""
    _, _, overlay = render.merged_serve_config(REPO / ENVS[env_name].overlay, REPO)
    outside = [overlay.kubernetes.network.kuberay_operator.selector(), overlay.kubernetes.network.prometheus.selector()]
    templates = [t for d in docs for t in _pod_specs(d)]
    rays = [t for t in templates if _is_ray(t)]
    assert rays and len(rays) < len(templates)
    for policy in (d for d in docs if d["kind"] == "NetworkPolicy"):
        name = policy["metadata"]["name"]
        selected = [t for t in templates if _selects(policy["spec"]["podSelector"], t["metadata"]["labels"])]
        assert selected, f"{name}: its podSelector selects no pod of the build"
        for rule in policy["spec"]["ingress"]:
            for rule_port in (p for p in rule.get("ports", []) if isinstance(p["port"], str)):
                for t in selected:  # a port name that a pod lacks admits nothing there
                    assert any(_port_matches(rule_port, p) for p in _container_ports(t)), \
                        f"{name}: no port {rule_port['port']!r} in {t['metadata']['labels']}"
            for peer in rule.get("from", []):
                pods = _same_namespace_pods(peer, templates)
                if pods is None:
                    assert peer in outside, f"{name}: {peer} is not a configured outside peer"
                else:
                    assert pods, f"{name}: {peer} selects no pod of the build"
    for t in templates:
        assert _sources(docs, t, {"containerPort": 1}) != [ANYONE], f"a pod no policy isolates: {t['metadata']}"
        for port in _container_ports(t):
            sources = _sources(docs, t, port)
            for peer in sources:
                pods = _same_namespace_pods(peer, templates)
                if _is_ray(t) and port.get("name") == "serve":
                    continue  # the one public port (API keys guard it)
                assert peer != ANYONE, f"{port} of {t['metadata']['labels']} is open to anyone"
                assert pods is None or all(_is_ray(p) for p in pods), f"{port}: from non-Ray pods {peer}"
        if not _is_ray(t):
            continue
        named = {p.get("name"): p for p in _container_ports(t)}
        assert ANYONE in _sources(docs, t, named["serve"])
        # Ray's unnamed ports (raylet, object manager, workers): from Ray pods only.
        internal = _sources(docs, t, {"containerPort": 10002})
        assert internal and all(_same_namespace_pods(p, templates) == rays for p in internal), internal
        if t["metadata"]["labels"]["ray.io/node-type"] == "head":  # KubeRay deploys serveConfigV2 through it
            assert outside[0] in _sources(docs, t, named["dashboard"]), \
                "the KubeRay operator cannot reach the dashboard"
    milvus = [t for t in templates if t["metadata"]["labels"].get("app.kubernetes.io/name") == "milvus"]
    assert milvus, "no Milvus pod in the build"
    for t in milvus:
        named = {p["name"]: p for p in _container_ports(t)}
        assert [_same_namespace_pods(p, templates) for p in _sources(docs, t, named["grpc"])] == [rays]
        assert _sources(docs, t, named["metrics"]) == [overlay.kubernetes.network.prometheus.selector()]
        assert _sources(docs, t, {"containerPort": 2379}) == []  # the embedded etcd


@pytest.mark.parametrize("overlay", sorted(DEPLOYED))
def test_network_policies_select_real_pods_and_admit_only_ray_pods(overlay: str) -> None:
    docs = _build(overlay)
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "NetworkPolicy"} >= {
        "ragserve-ray", "ragserve-ray-head", "milvus"}
    _check_network_policies(docs, DEPLOYED[overlay])


def _policy(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == name)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda docs: _policy(docs, "milvus")["spec"]["podSelector"]["matchLabels"].update(
            {"app.kubernetes.io/name": "milvus-standalone"}), "selects no pod"),
        (lambda docs: _policy(docs, "milvus")["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"].update(
            {"app.kubernetes.io/name": "ray"}), "selects no pod"),
        (lambda docs: _policy(docs, "milvus")["spec"]["ingress"][0]["from"][0]["podSelector"].update(
            matchLabels={"app.kubernetes.io/part-of": "ragserve"}), "non-Ray pods"),
        (lambda docs: _policy(docs, "milvus")["spec"]["ingress"][1].pop("from"), "open to anyone"),
        (lambda docs: _policy(docs, "ragserve-ray-head")["spec"]["ingress"][0]["ports"][0].update(port="dashbord"),
         "dashbord"),
        (lambda docs: _policy(docs, "ragserve-ray")["spec"]["ingress"][1]["ports"][0].update(port=10001),
         "open to anyone"),
        (lambda docs: docs.remove(_policy(docs, "ragserve-ray-head")), "KubeRay operator"),
    ],
    ids=["milvus-pod-label", "milvus-peer-label", "milvus-peer-too-wide", "milvus-metrics-open",
         "unknown-port-name", "ray-client-port-open", "head-policy-missing"],
)
def test_network_policy_checks_catch_a_broken_policy(mutate: Any, message: str) -> None:
    docs = json.loads(json.dumps(_build("overlays/gpu-prod")))  # a copy: _build is cached
    _check_network_policies(docs, "prod")
    mutate(docs)
    with pytest.raises(AssertionError, match=message):
        _check_network_policies(docs, "prod")


def _check_keys_mount(docs: list[dict[str, Any]], env_name: str) -> None:
    """Raise AssertionError unless every Ray container reads the keys Secret where the config says."""
    _, cfg, overlay = render.merged_serve_config(REPO / ENVS[env_name].overlay, REPO)
    keys = overlay.kubernetes.api_keys
    assert keys is not None and cfg.auth.mode == "keys"
    rayservice = next(d for d in docs if d["kind"] == "RayService")
    configmap = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "ragserve-serve-config")
    files = set()
    for text in (rayservice["spec"]["serveConfigV2"], configmap["data"]["serve_config.yaml"]):
        serve = yaml.safe_load(text)
        auth = serve["applications"][0]["args"]["auth"]
        assert auth["mode"] == "keys", auth
        files.add(auth["keys_file"])
    assert files == {cfg.auth.keys_file}, "serveConfigV2 and the ConfigMap name different keys files"
    for template in _pod_specs(rayservice):
        volumes = [v for v in template["spec"]["volumes"] if v.get("secret", {}).get("secretName") == keys.secret]
        assert len(volumes) == 1, f"{template['metadata']['labels']}: no volume of Secret {keys.secret}"
        secret = volumes[0]["secret"]
        # The config needs the file: a missing Secret must stop the pod, not a replica later.
        assert secret["optional"] is False, "the keys Secret is optional"
        assert secret["defaultMode"] == 0o440
        for container in template["spec"]["containers"]:
            mounts = [m for m in container["volumeMounts"] if m["name"] == volumes[0]["name"]]
            assert len(mounts) == 1 and mounts[0]["readOnly"] is True, container["name"]
            assert "subPath" not in mounts[0], "a subPath mount never sees the Secret's updates"
            paths = {f"{mounts[0]['mountPath']}/{item['path']}" for item in secret["items"] if item["key"] == keys.key}
            assert paths == files, f"{container['name']} mounts {paths}, the config reads {files}"


@pytest.mark.parametrize("overlay", sorted(DEPLOYED))
def test_every_ray_container_reads_the_keys_secret_where_the_config_points(overlay: str) -> None:
    _check_keys_mount(_build(overlay), DEPLOYED[overlay])


def _ray_templates(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    cluster = next(d for d in docs if d["kind"] == "RayService")["spec"]["rayClusterConfig"]
    return [g["template"] for g in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda docs: _ray_templates(docs)[1]["spec"]["containers"][0]["volumeMounts"][-1].update(
            mountPath="/etc/keys"), "the config reads"),
        (lambda docs: _ray_templates(docs)[0]["spec"]["volumes"][-1]["secret"].update(optional=True), "optional"),
        (lambda docs: _ray_templates(docs)[-1]["spec"]["volumes"].pop(), "no volume"),
        (lambda docs: _ray_templates(docs)[0]["spec"]["containers"][0]["volumeMounts"][-1].update(
            subPath="keys.yaml"), "subPath"),
    ],
    ids=["mount-elsewhere", "optional-secret", "worker-without-secret", "subpath-mount"],
)
def test_keys_mount_check_catches_a_broken_mount(mutate: Any, message: str) -> None:
    docs = json.loads(json.dumps(_build("overlays/gpu-prod")))
    _check_keys_mount(docs, "prod")
    mutate(docs)
    with pytest.raises(AssertionError, match=message):
        _check_keys_mount(docs, "prod")


def test_keys_secret_is_created_by_hand_as_the_readme_says() -> None:
    """The one reference the builds do not resolve: the keys Secret is never committed. The README's
    commands create it with the Secret name and key the renderer mounts, with the real CLI's flags."""
    from deployments.cli import parser

    text = (REPO / "k8s/README.md").read_text(encoding="utf-8")
    for env in ENVS.values():
        keys = render.merged_serve_config(REPO / env.overlay, REPO)[2].kubernetes.api_keys
        assert keys is not None
        assert f"create secret generic {keys.secret} --from-file={keys.key}" in text
    create = next(line.strip() for line in text.splitlines() if line.strip().startswith("ragserve keys create"))
    args = parser().parse_args(create.split("#")[0].split()[1:])
    assert args.file == Path(keys.key) and args.scopes and args.tenant
    for overlay in DEPLOYED:
        assert not [d for d in _build(overlay) if d["kind"] == "Secret" and d["metadata"]["name"] == keys.secret]


def _check_dashboard_not_exposed(docs: list[dict[str, Any]]) -> None:
    """Raise AssertionError if the Ray dashboard (8265) can be reached from outside the cluster."""
    rayservice = next(d for d in docs if d["kind"] == "RayService")
    head = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]
    # KubeRay's head Service takes headGroupSpec.serviceType (default ClusterIP) or headService.
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", "the head Service (dashboard) is exposed"
    assert head.get("headService", {}).get("spec", {}).get("type", "ClusterIP") == "ClusterIP"
    assert not head.get("enableIngress"), "KubeRay's head Ingress routes the dashboard"
    serve_svc = rayservice["spec"].get("serveService", {}).get("spec", {})
    assert 8265 not in [p.get("port") for p in serve_svc.get("ports", [])]
    serve_port = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["http_options"]["port"]
    for svc in (d for d in docs if d["kind"] == "Service"):
        if svc["spec"].get("type") in {"LoadBalancer", "NodePort"}:
            ports = {q for p in svc["spec"]["ports"] for q in (p["port"], p.get("targetPort"))}
            assert not ports & {8265, "dashboard"}, f"Service {svc['metadata']['name']} exposes the dashboard"
    for ing in (d for d in docs if d["kind"] == "Ingress"):
        for rule in ing["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                # Only KubeRay's serve Service, on the Serve port: never the head Service.
                assert backend["name"] == f"{rayservice['metadata']['name']}-serve-svc", backend
                assert backend["port"] == {"number": serve_port}, f"Ingress {ing['metadata']['name']} routes {backend}"


@pytest.mark.parametrize("overlay", sorted(DEPLOYED))
def test_the_ray_dashboard_is_not_exposed(overlay: str) -> None:
    docs = _build(overlay)
    _check_dashboard_not_exposed(docs)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda docs: next(d for d in docs if d["kind"] == "RayService")["spec"]["rayClusterConfig"][
            "headGroupSpec"].update(serviceType="LoadBalancer"), "head Service"),
        (lambda docs: next(d for d in docs if d["kind"] == "RayService")["spec"]["rayClusterConfig"][
            "headGroupSpec"].update(enableIngress=True), "head Ingress"),
        (lambda docs: next(d for d in docs if d["kind"] == "Ingress")["spec"]["rules"][0]["http"]["paths"][0][
            "backend"]["service"].update(name="ragserve-head-svc", port={"number": 8265}), "head-svc"),
        (lambda docs: docs.append({"kind": "Service", "metadata": {"name": "dash"}, "spec": {
            "type": "NodePort", "ports": [{"port": 80, "targetPort": 8265}]}}), "exposes the dashboard"),
    ],
    ids=["head-load-balancer", "head-ingress", "ingress-to-dashboard", "node-port"],
)
def test_dashboard_check_catches_an_exposed_dashboard(mutate: Any, message: str) -> None:
    docs = json.loads(json.dumps(_build("overlays/gpu-prod")))
    _check_dashboard_not_exposed(docs)
    mutate(docs)
    with pytest.raises(AssertionError, match=message):
        _check_dashboard_not_exposed(docs)
