"""The overlay files of the k8s renderer: their schema, and the merge into the one Serve config.

``cluster/serve_config.<env>.yaml`` holds ``serve_overrides``, ``application_overrides`` and
``args_overrides`` (merged into ``cluster/serve_config.yaml`` as JSON merge patches, RFC 7386) and a
``kubernetes`` section (:class:`KubernetesOptions`): images, pod shapes, storage, GCS fault
tolerance, the public endpoint and the Prometheus selector: what is not part of the Serve config.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from deployments.config import AppConfig, load_serve_yaml, parse_app_config
from deployments.errors import ConfigError
from deployments.stack import check_exposure

BASE_CONFIG = "cluster/serve_config.yaml"
#: Where every Ray pod mounts the serve config (a ConfigMap; RAGSERVE_CONFIG names the file in it).
CONFIG_DIR = "/etc/ragserve"
#: Where every Ray pod mounts the API keys Secret: the serve config's ``auth.keys_file`` is a file in
#: it (:attr:`ApiKeys.path`), so the mount and the config cannot disagree.
KEYS_DIR = f"{CONFIG_DIR}/keys"
QUANTITY = r"^[0-9]+(Mi|Gi|Ti)$"
#: Node labels that GPU Feature Discovery / Node Feature Discovery add only after a node has joined:
#: a node autoscaler's node template lacks them, so a pod selecting them never triggers a scale-up
#: from zero (NVIDIA GPU operator docs: GFD labels are applied by the operator on running nodes).
DISCOVERED_LABEL = re.compile(r"^(nvidia\.com/|feature\.node\.kubernetes\.io/)")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PodShape(_Strict):
    """CPUs, memory and scratch disk of one pod (requests = limits: the Guaranteed QoS class)."""

    cpus: int = Field(ge=1, description="Whole CPUs; also Ray's logical CPUs on CPU pods.")
    memory: str = Field(pattern=QUANTITY, description="Memory, e.g. 16Gi.")
    ephemeral_storage: str = Field(
        pattern=QUANTITY,
        description="Container scratch disk (Ray's logs and object spilling under /tmp/ray, pip caches): "
        "requested so the scheduler places the pod on a node with room, and evicts it past the limit "
        "instead of filling the node.",
    )
    idle_timeout_s: int | None = Field(
        None, ge=0, description="Idle time before the autoscaler removes a pod (default: the cluster's)."
    )


class GpuPodShape(PodShape):
    """A GPU pod: runs only generator replicas, from the GPU image."""

    image: str = Field(description="The GPU image (CUDA vLLM) of these pods; the head and CPU pods use `image`.")
    gpus: int = Field(1, ge=1, description="GPUs per pod.")
    gpu_resource: str = Field("nvidia.com/gpu", description="Extended resource name of the GPU.")
    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Extra node labels, only ones a node pool sets at creation (e.g. "
        "cloud.google.com/gke-accelerator); the GPU request and the tolerations place the pods already.",
    )
    tolerations: list[dict[str, Any]] = Field(default_factory=list, description="Tolerates GPU node taints.")

    @field_validator("node_selector")
    @classmethod
    def _known_at_scale_up(cls, value: dict[str, str]) -> dict[str, str]:
        bad = sorted(k for k in value if DISCOVERED_LABEL.match(k))
        if bad:
            raise ValueError(f"{bad}: added by feature discovery after a node joins, so a scale-up from zero "
                             "would never produce a matching node; select on node-pool labels, or none")
        return value


class ModelCache(_Strict):
    """The volume every Ray pod mounts: model weights, and the documents of ``ragserve ingest``."""

    claim: str = Field("ragserve-model-cache", description="Name of the PersistentVolumeClaim.")
    path: str = Field("/models", description="Where it is mounted (HF_HOME, RAGSERVE_CACHE_DIR under it).")
    size: str = Field("100Gi", pattern=QUANTITY, description="Requested capacity.")
    access_mode: Literal["ReadWriteMany", "ReadWriteOnce"] = Field(
        "ReadWriteMany", description="ReadWriteMany whenever pods may run on several nodes.")
    storage_class: str | None = Field(
        description="A storage class offering that access mode (RWX: NFS, EFS, Filestore, CephFS); None: the "
        "cluster default, which is often ReadWriteOnce only (the claim then stays Pending).")
    ingest_path: str = Field(
        "/data/ingest",
        description="Where the volume's `ingest/` directory is mounted in every Ray pod: files to ingest go "
        "there, since `ragserve ingest` parses them on worker pods.")

    @field_validator("storage_class")
    @classmethod
    def _rwx_needs_a_class(cls, value: str | None, info: Any) -> str | None:
        if value is None and info.data.get("access_mode") == "ReadWriteMany":
            raise ValueError("ReadWriteMany needs a storage class that offers it (the default rarely does)")
        return value


class GcsFaultTolerance(_Strict):
    """GCS fault tolerance: the head's cluster state in an external Redis (KubeRay's HA guide)."""

    redis_address: str = Field(description="host:port of the Redis, e.g. ragserve-redis:6379.")
    password_secret: str = Field("ragserve-redis", description="Secret holding the Redis password.")
    password_key: str = Field("password", description="Key of the password in that Secret.")


class IngressOptions(_Strict):
    """The public endpoint: an Ingress in front of KubeRay's serve Service (ingress-nginx annotations)."""

    host: str = Field(description="Public host name.")
    class_name: str = Field("nginx", description="ingressClassName.")
    tls_secret: str | None = Field(None, description="TLS Secret for the host (e.g. from cert-manager); None: HTTP.")


class ApiKeys(_Strict):
    """The Secret holding the keys file of ``ragserve keys``, mounted in every Ray pod at :data:`KEYS_DIR`.

    It is created by hand (k8s/README.md), never rendered: the renderer only mounts it and points
    ``auth.keys_file`` at it (``auth.mode: keys``).
    """

    secret: str = Field("ragserve-api-keys", pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
                        description="Name of the Secret.")
    key: str = Field("keys.yaml", pattern=r"^[-_a-zA-Z0-9][-._a-zA-Z0-9]*$",
                     description="Key of the keys file in that Secret (also its file name in the pods).")

    @property
    def path(self) -> str:
        """The keys file inside the pods: the serve config's ``auth.keys_file``."""
        return f"{KEYS_DIR}/{self.key}"


class Peer(_Strict):
    """Pods allowed through a NetworkPolicy: labels, in one namespace or in any."""

    namespace: str | None = Field(None, description="Their namespace (its kubernetes.io/metadata.name); None: any.")
    pod_labels: dict[str, str] = Field(min_length=1, description="Labels the pods carry.")

    def selector(self) -> dict[str, Any]:
        """The NetworkPolicy peer (a pod selector within a namespace selector: both must match)."""
        ns = {"matchLabels": {"kubernetes.io/metadata.name": self.namespace}} if self.namespace else {}
        return {"namespaceSelector": ns, "podSelector": {"matchLabels": dict(self.pod_labels)}}


class NetworkOptions(_Strict):
    """Who besides the Ray pods reaches them and Milvus (the rendered NetworkPolicies)."""

    kuberay_operator: Peer = Field(
        default_factory=lambda: Peer(pod_labels={"app.kubernetes.io/component": "kuberay-operator"}),
        description="The KubeRay operator's pods: they deploy serveConfigV2 and read Serve's status through the "
        "head's dashboard port. Default: the component label both KubeRay's Helm chart and its kustomize "
        "manifests set, in any namespace; name the operator's namespace to narrow it.")
    prometheus: Peer = Field(
        default_factory=lambda: Peer(pod_labels={"app.kubernetes.io/name": "prometheus"}),
        description="The Prometheus pods scraping the metrics ports (the Prometheus operator labels its pods "
        "app.kubernetes.io/name: prometheus); name its namespace to narrow it.")


class KubernetesOptions(_Strict):
    """Cluster wiring that is not part of the Serve config."""

    name: str = Field(
        "ragserve", pattern=r"^[a-z]([-a-z0-9]{0,30}[a-z0-9])?$", description="Name of the RayService."
    )
    image: str = Field(description="The CPU image (built from docker/Dockerfile) of the head and the CPU pods.")
    idle_timeout_s: int = Field(300, ge=0, description="Autoscaler idle timeout of worker pods.")
    run_as_user: int = Field(1000, ge=1, description="The image's non-root user (and group, the pods' fsGroup).")
    model_cache: ModelCache = Field(description="The shared volume.")
    milvus_secret: str = Field("milvus-credentials", description="Secret holding the Milvus token.")
    milvus_secret_key: str = Field("token", description="Key of the token in that Secret.")
    hf_token_secret: str = Field(
        "hf-token", description="Optional Secret (key `token`) giving HF_TOKEN, for gated models.")
    head: PodShape = Field(description="The head pod (runs no replicas).")
    cpu_workers: PodShape = Field(description="Pods for every stage that needs no GPU.")
    gpu_workers: GpuPodShape | None = Field(None, description="Pods for the generator; None: no GPU group.")
    gcs_fault_tolerance: GcsFaultTolerance | None = Field(
        None, description="External Redis for the GCS; None: losing the head restarts the whole cluster.")
    prometheus_selector: dict[str, str] = Field(
        default_factory=lambda: {"release": "prometheus"},
        description="Labels the Prometheus selects PodMonitors and PrometheusRules by (kube-prometheus-stack: "
        "release: <helm release>); put on every PodMonitor and the PrometheusRule alike.")
    ingress: IngressOptions | None = Field(None, description="The public endpoint; None: none.")
    api_keys: ApiKeys | None = Field(
        default_factory=ApiKeys,
        description="The API keys Secret every Ray pod mounts (auth.mode keys); None: no keys, which the "
        "renderer accepts only with args_overrides.auth.mode: off (an open server on purpose).")
    network: NetworkOptions = Field(default_factory=NetworkOptions, description="NetworkPolicy peers.")


class Overlay(_Strict):
    """One environment's overlay file."""

    serve_overrides: dict[str, Any] = Field(default_factory=dict, description="Merged into the top level.")
    application_overrides: dict[str, Any] = Field(default_factory=dict, description="Into applications[0].")
    args_overrides: dict[str, Any] = Field(default_factory=dict, description="Into applications[0].args.")
    kubernetes: KubernetesOptions = Field(description="Pod shapes and wiring.")


# --------------------------------------------------------------------------- merging
def merge_patch(target: Any, patch: Any) -> Any:
    """JSON merge patch (RFC 7386): maps merge, anything else replaces, ``None`` deletes a key."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def load_overlay(path: Path) -> Overlay:
    """Read and validate an overlay file; errors name the file and field."""
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    try:
        overlay = Overlay.model_validate(data)
    except ValidationError as err:
        lines = [f"  {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()]
        raise ConfigError(f"invalid overlay {path.name}:\n" + "\n".join(lines)) from None
    if "applications" in overlay.serve_overrides or "args" in overlay.application_overrides:
        raise ConfigError(
            f"{path.name}: application fields go in application_overrides, args in args_overrides"
        )
    return overlay


def merged_serve_config(overlay_path: Path, repo: Path) -> tuple[dict[str, Any], AppConfig, Overlay]:
    """The base Serve config with the overlay merged in, its validated args, and the overlay."""
    base = load_serve_yaml(repo / BASE_CONFIG)
    overlay = load_overlay(overlay_path)
    base_app = base["applications"][0]
    serve = merge_patch({k: v for k, v in base.items() if k != "applications"}, overlay.serve_overrides)
    app = merge_patch({k: v for k, v in base_app.items() if k != "args"}, overlay.application_overrides)
    app["args"] = merge_patch(base_app.get("args") or {}, overlay.args_overrides)
    if overlay.kubernetes.api_keys is not None:
        app["args"] = merge_patch(app["args"], {"auth": _auth_of(overlay, overlay_path.name)})
    serve["applications"] = [app]
    cfg = parse_app_config(app["args"], where=f"{BASE_CONFIG} + {overlay_path.name}: applications[0].args")
    _check_runs_in_pods(serve, overlay_path.name)
    try:  # the pods listen on 0.0.0.0: the local stack's rule, open only on purpose, holds there too
        check_exposure(cfg, serve["http_options"]["host"])
    except ConfigError as e:
        raise ConfigError(f"{overlay_path.name}: {e.message} (in a pod: set kubernetes.api_keys, the mounted "
                          "keys Secret)") from None
    return serve, cfg, overlay


def _auth_of(overlay: Overlay, where: str) -> dict[str, str]:
    # The keys file is where the pods mount the Secret, so the overlay cannot name another one;
    # the other auth fields (reload interval, default limits) stay the overlay's to set.
    keys = overlay.kubernetes.api_keys
    assert keys is not None
    auth = {"mode": "keys", "keys_file": keys.path}
    given = overlay.args_overrides.get("auth") or {}
    clash = sorted(k for k, v in auth.items() if k in given and given[k] != v)
    if clash:
        raise ConfigError(f"{where}: args_overrides.auth.{clash[0]} contradicts kubernetes.api_keys, which mounts "
                          f"the keys at {keys.path} (auth.mode keys): leave {', '.join(clash)} to the renderer")
    return auth


def _check_runs_in_pods(serve: dict[str, Any], where: str) -> None:
    # KubeRay's serve Service sends traffic to the proxies of the worker pods, on the pod IP.
    if (serve.get("http_options") or {}).get("host") != "0.0.0.0":
        raise ConfigError(
            f"{where}: http_options.host must be 0.0.0.0 in a pod (the Service and probes use the pod IP)"
        )
    if serve.get("proxy_location") != "EveryNode":
        raise ConfigError(
            f"{where}: proxy_location must be EveryNode (the head runs no replicas and gets no traffic)"
        )
    if serve["applications"][0].get("import_path") != "deployments.app:app_builder":
        raise ConfigError(f"{where}: import_path must be deployments.app:app_builder")



# --------------------------------------------------------------------------- output
class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    # Multi-line strings (serveConfigV2) as literal blocks, so the embedded YAML stays readable.
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)


_Dumper.add_representer(str, _str)


def dump_yaml(data: Any) -> str:
    """Deterministic YAML: insertion order (built in a fixed order), no line folding."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=4096)
