"""What the RayService needs to survive a real cluster (issue 18), asserted on the rendered files:
drains (PDBs), the head's loss (GCS fault tolerance), pod loss at minimum scale (placement),
scale-from-zero (GPU node selection), the image, storage, scraping, shutdown and the endpoint."""

from __future__ import annotations

import random
import shutil
import subprocess
from fractions import Fraction
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployments import stages
from deployments.errors import ConfigError
from deployments.render import capacity
from deployments.render import k8s as render
from deployments.render.overlay import load_overlay
from deployments.render.rayservice import GRACE_MARGIN_S, grace_seconds, pull_policy

REPO = Path(__file__).resolve().parents[2]
ENVS = {e.name: e for e in render.ENVIRONMENTS}


@cache
def _rendered() -> dict[str, list[dict[str, Any]]]:
    return {p: [d for d in yaml.safe_load_all(t) if d] for p, t in render.render_all(REPO).items()}


def _objects(kind: str) -> list[dict[str, Any]]:
    return [d for docs in _rendered().values() for d in docs if isinstance(d, dict) and d.get("kind") == kind]


def _spec(env: str) -> dict[str, Any]:
    serve, cfg, overlay = render.merged_serve_config(REPO / ENVS[env].overlay, REPO)
    return render.rayservice_spec(serve, cfg, overlay.kubernetes, REPO)


def _templates(env: str) -> list[dict[str, Any]]:
    cluster = _spec(env)["rayClusterConfig"]
    return [g["template"] for g in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]]


def _groups(env: str) -> dict[str, dict[str, Any]]:
    return {g["groupName"]: g for g in _spec(env)["rayClusterConfig"]["workerGroupSpecs"]}


# --------------------------------------------------------------------------- 1. drains
def test_no_pdb_blocks_a_drain() -> None:
    pdbs = _objects("PodDisruptionBudget")
    assert pdbs, "prod keeps two CPU pods and must protect them"
    for env, where in ENVS.items():
        groups = _groups(env)
        for pdb in pdbs:
            spec = pdb["spec"]
            # maxUnavailable and percentages are not evaluated for a RayCluster's pods (no scale
            # subresource): the budget would allow 0 disruptions.
            assert "maxUnavailable" not in spec and isinstance(spec["minAvailable"], int)
            group = groups.get(spec["selector"]["matchLabels"]["ray.io/group"])
            if group is not None and pdb in _rendered().get(f"{where.own_dir}/pdb.yaml", []):
                assert spec["minAvailable"] < group["minReplicas"], "a drain must be allowed at minimum scale"
                assert spec["minAvailable"] >= 1


def test_groups_of_one_pod_get_no_pdb() -> None:
    spec = {"rayClusterConfig": {"workerGroupSpecs": [{"groupName": "gpu-workers", "minReplicas": 1},
                                                      {"groupName": "cpu-workers", "minReplicas": 3}]}}
    pdbs = render.pod_disruption_budgets(spec)
    assert [(p["metadata"]["name"], p["spec"]["minAvailable"]) for p in pdbs] == [("ragserve-cpu-workers", 2)]


# --------------------------------------------------------------------------- 2. head loss
def test_prod_has_gcs_fault_tolerance_and_its_redis() -> None:
    ft = _spec("prod")["rayClusterConfig"]["gcsFaultToleranceOptions"]
    host, port = ft["redisAddress"].split(":")
    ref = ft["redisPassword"]["valueFrom"]["secretKeyRef"]
    redis = REPO / "k8s/overlays/gpu-prod/redis"
    service = yaml.safe_load((redis / "service.yaml").read_text())
    secret = yaml.safe_load((redis / "secret.yaml").read_text())
    statefulset = yaml.safe_load((redis / "statefulset.yaml").read_text())
    assert service["metadata"]["name"] == host and int(port) in [p["port"] for p in service["spec"]["ports"]]
    assert secret["metadata"]["name"] == ref["name"] and ref["key"] in secret["stringData"]
    assert "--appendonly yes" in statefulset["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert "gcsFaultToleranceOptions" not in _spec("cpu-dev")["rayClusterConfig"]


# --------------------------------------------------------------------------- 3. pod loss at min scale
@pytest.mark.parametrize("env", sorted(ENVS))
def test_every_stage_with_two_replicas_at_min_is_on_two_pods(env: str) -> None:
    _, cfg, _ = render.merged_serve_config(REPO / ENVS[env].overlay, REPO)
    gpu = _groups(env).get("gpu-workers")
    at_min, _ = capacity.cpu_replicas(cfg, on_gpu=capacity.gpu_stage(cfg) if gpu else None)
    cpu = _groups(env)["cpu-workers"]
    placement = capacity.first_fit(at_min, cpu["minReplicas"], int(cpu["rayStartParams"]["num-cpus"]))
    assert placement is not None, "the minimum replicas fit the minimum pods"
    for r in at_min:
        if r.count >= 2:
            # Any placement Serve picks honours max_replicas_per_node, so spread >= 2 holds for all.
            assert capacity.min_spread(r) >= 2, f"{r.stage}: {r.count} replicas may share one pod"
            assert sum(1 for pod in placement if pod.get(r.stage)) >= 2
    if env == "prod":
        assert cpu["minReplicas"] >= 2


def test_max_replicas_per_node_reaches_serve() -> None:
    _, cfg, _ = render.merged_serve_config(REPO / ENVS["prod"].overlay, REPO)
    opts = cfg.encoder.deployment.serve_options()
    assert opts["max_replicas_per_node"] == 1
    serve = pytest.importorskip("ray.serve", reason="ray[serve] not installed")
    serve.deployment(lambda: None).options(**opts)  # Serve's own option validation accepts it


def test_capped_upper_bound_holds_for_any_arrival_order() -> None:
    rng = random.Random(11)
    for _ in range(300):
        cpus = rng.choice([2, 4, 8])
        reps = [capacity.Replicas(f"s{i}", Fraction(rng.choice([0, 1, 3, 5, 10, 15]), 10), rng.randint(1, 8),
                                  rng.choice([None, 1, 2, 3])) for i in range(rng.randint(1, 5))]
        bound = capacity.cpu_group_size(reps, reps, cpus).max_pods
        arrivals = [r for r in reps for _ in range(r.count)]
        rng.shuffle(arrivals)
        pods: list[dict[str, Any]] = []
        for r in arrivals:  # a new pod only when the replica fits in none (CPU or its cap)
            fits = [p for p in pods if r.cpus <= p["free"] and (r.per_pod is None or p.get(r.stage, 0) < r.per_pod)]
            pod = rng.choice(fits) if fits else pods.append({"free": Fraction(cpus)}) or pods[-1]
            pod["free"] -= r.cpus
            pod[r.stage] = pod.get(r.stage, 0) + 1
        assert len(pods) <= bound, (cpus, reps)


# --------------------------------------------------------------------------- 5. storage
def test_model_cache_claim_has_a_class_for_its_access_mode_and_pods_can_write_it() -> None:
    prod = yaml.safe_load(render.render_all(REPO)["k8s/base/pvc-model-cache.yaml"])
    assert prod["spec"]["accessModes"] == ["ReadWriteMany"] and prod["spec"]["storageClassName"]
    dev = yaml.safe_load(render.render_all(REPO)["k8s/overlays/cpu-dev/pvc-model-cache-patch.yaml"])
    assert dev["spec"]["accessModes"] == ["ReadWriteOnce"] and "storageClassName" not in dev["spec"]
    for env in ENVS:
        for t in _templates(env):
            sc = t["spec"]["securityContext"]
            assert sc["runAsNonRoot"] and sc["fsGroup"] == sc["runAsUser"] == 1000
            assert sc["fsGroupChangePolicy"] == "OnRootMismatch"


def test_rwx_without_a_storage_class_is_refused(tmp_path: Path) -> None:
    text = (REPO / ENVS["prod"].overlay).read_text().replace("storage_class: standard-rwx", "storage_class: null")
    (tmp_path / "o.yaml").write_text(text)
    with pytest.raises(ConfigError, match="kubernetes.model_cache.storage_class"):
        load_overlay(tmp_path / "o.yaml")


# --------------------------------------------------------------------------- 4. ingest storage
@pytest.mark.parametrize("env", sorted(ENVS))
def test_every_ray_pod_mounts_the_ingest_directory(env: str) -> None:
    _, _, overlay = render.merged_serve_config(REPO / ENVS[env].overlay, REPO)
    cache_ = overlay.kubernetes.model_cache
    for t in _templates(env):
        mounts = t["spec"]["containers"][0]["volumeMounts"]
        assert {"name": "model-cache", "mountPath": cache_.ingest_path, "subPath": "ingest"} in mounts


# --------------------------------------------------------------------------- 6. scale from zero
def test_gpu_pods_select_no_discovered_label(tmp_path: Path) -> None:
    for t in _templates("prod"):
        assert not any(k.startswith(("nvidia.com/", "feature.node.kubernetes.io/"))
                       for k in t["spec"].get("nodeSelector", {}))
    gpu = _groups("prod")["gpu-workers"]["template"]["spec"]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1" and gpu["tolerations"]
    text = (REPO / ENVS["prod"].overlay).read_text().replace(
        "node_selector: {}", 'node_selector: {"nvidia.com/gpu.present": "true"}')
    (tmp_path / "o.yaml").write_text(text)
    with pytest.raises(ConfigError, match="gpu_workers.node_selector"):
        load_overlay(tmp_path / "o.yaml")


# --------------------------------------------------------------------------- 7. images
def test_cpu_and_gpu_pods_run_their_own_images_pulled_by_mutability() -> None:
    cluster = _spec("prod")["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    groups = {g["groupName"]: g["template"]["spec"]["containers"][0] for g in cluster["workerGroupSpecs"]}
    assert head["image"] == groups["cpu-workers"]["image"] != groups["gpu-workers"]["image"]
    assert "cpu" in head["image"] and "gpu" in groups["gpu-workers"]["image"]
    assert all(c["imagePullPolicy"] == "Always" for c in [head, *groups.values()])  # tags can be re-pushed
    assert pull_policy("r.example/ragserve-gpu@sha256:" + "a" * 64) == "IfNotPresent"
    assert pull_policy("r.example/ragserve-gpu:0.1.0") == "Always"


# --------------------------------------------------------------------------- 8. scraping
def test_every_monitor_and_rule_carries_the_prometheus_selector() -> None:
    _, _, overlay = render.merged_serve_config(REPO / ENVS["prod"].overlay, REPO)
    wanted = overlay.kubernetes.prometheus_selector.items()
    monitors, rules = _objects("PodMonitor"), _objects("PrometheusRule")
    assert len(monitors) == 3 and len(rules) == 1
    for obj in [*monitors, *rules]:
        assert wanted <= obj["metadata"]["labels"].items(), obj["metadata"]["name"]
    head_ports = {p["name"] for p in _templates("prod")[0]["spec"]["containers"][0]["ports"]}
    for m in monitors:
        if m["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] != "ragserve":
            continue
        for ep in m["spec"]["podMetricsEndpoints"]:
            assert {"action": "replace", "sourceLabels": ["__meta_kubernetes_pod_label_ray_io_cluster"],
                    "targetLabel": "ray_io_cluster"} in ep["relabelings"]
        if m["spec"]["selector"]["matchLabels"]["ray.io/node-type"] == "head":
            ports = {ep["port"] for ep in m["spec"]["podMetricsEndpoints"]}
            assert ports == {"metrics", "as-metrics", "dash-metrics"} and ports <= head_ports


# --------------------------------------------------------------------------- 9. the rest
@pytest.mark.parametrize("env", sorted(ENVS))
def test_pods_outlive_their_replicas_graceful_shutdown(env: str) -> None:
    _, cfg, _ = render.merged_serve_config(REPO / ENVS[env].overlay, REPO)
    groups = _groups(env)
    longest = {"gpu-workers": cfg.generator.deployment.graceful_shutdown_timeout_s,
               "cpu-workers": max(s.config(cfg).deployment.graceful_shutdown_timeout_s for s in stages.enabled(cfg)
                                  if "gpu-workers" not in groups or s.name != "generator")}
    for name, group in groups.items():
        assert group["template"]["spec"]["terminationGracePeriodSeconds"] >= longest[name] + GRACE_MARGIN_S
    if env == "prod":
        assert groups["gpu-workers"]["template"]["spec"]["terminationGracePeriodSeconds"] > 60
    assert grace_seconds(cfg, []) == GRACE_MARGIN_S


@pytest.mark.parametrize("env", sorted(ENVS))
def test_containers_request_scratch_disk_and_take_an_optional_hf_token(env: str) -> None:
    for t in _templates(env):
        c = t["spec"]["containers"][0]
        assert c["resources"]["requests"]["ephemeral-storage"] == c["resources"]["limits"]["ephemeral-storage"]
        token = next(e for e in c["env"] if e["name"] == "HF_TOKEN")
        assert token["valueFrom"]["secretKeyRef"]["optional"] is True


def test_ingress_is_safe_for_streamed_answers() -> None:
    serve, cfg, overlay = render.merged_serve_config(REPO / ENVS["prod"].overlay, REPO)
    (ing,) = _rendered()["k8s/overlays/gpu-prod/ingress.yaml"]
    notes = ing["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    for key in ("proxy-read-timeout", "proxy-send-timeout"):  # ingress-nginx's default is 60 s
        assert int(notes[f"nginx.ingress.kubernetes.io/{key}"]) >= serve["http_options"]["request_timeout_s"] > 60
    assert int(notes["nginx.ingress.kubernetes.io/proxy-body-size"].rstrip("m")) * 2**20 > cfg.ingress.max_body_bytes
    backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": f"{overlay.kubernetes.name}-serve-svc", "port": {"number": serve["http_options"]["port"]}}


def test_milvus_runs_in_standalone_mode() -> None:
    milvus = yaml.safe_load((REPO / "k8s/base/milvus/statefulset.yaml").read_text())
    env = {e["name"]: e.get("value") for e in milvus["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["DEPLOY_MODE"] == "STANDALONE" and env["ETCD_USE_EMBED"] == "true"


def test_docs_name_the_kuberay_version_with_auth_options() -> None:
    for doc in ("README.md", "k8s/README.md"):
        text = (REPO / doc).read_text()
        assert "1.5.1" in text and "≥ 1.5 " not in text and "≥ 1.5," not in text, doc


def test_prod_build_resolves_the_redis_and_matches_selectors() -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed: kustomize build not checked")
    out = subprocess.run(["kubectl", "kustomize", str(REPO / "k8s/overlays/gpu-prod")],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    ft = next(d for d in docs if d["kind"] == "RayService")["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    assert ("Service", ft["redisAddress"].split(":")[0]) in names
    assert ("Secret", ft["redisPassword"]["valueFrom"]["secretKeyRef"]["name"]) in names
    assert ("PodDisruptionBudget", "ragserve-cpu-workers") in names and ("Ingress", "ragserve") in names
