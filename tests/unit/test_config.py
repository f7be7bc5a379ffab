"""Unit tests of ``deployments.config``: the one configuration schema and its loaders.

Covers: every serve config YAML under ``cluster/`` validates; ``parse_app_config`` rejects
unknown fields and bad values with a ``ConfigError`` naming the dotted field path;
``DeploymentOptions.serve_options``; ``env``; and ``load_serve_yaml``'s one-application rule.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from deployments.config import (
    AppConfig,
    AutoscalingOptions,
    DeploymentOptions,
    ENCODER_PRECISIONS,
    load_config,
    load_serve_yaml,
    parse_app_config,
)
from deployments import stages
from deployments.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def _serve_yamls() -> list[Path]:
    """Every YAML under cluster/ that is a Ray Serve config (has ``applications``)."""
    found = []
    for path in sorted((REPO / "cluster").rglob("*.y*ml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "applications" in data:
            found.append(path)
    return found


def test_the_default_serve_config_is_found() -> None:
    assert REPO / "cluster" / "serve_config.yaml" in _serve_yamls()


@pytest.mark.parametrize("path", _serve_yamls(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_cluster_serve_config_validates(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, AppConfig)
    app = yaml.safe_load(path.read_text(encoding="utf-8"))["applications"][0]
    assert app["import_path"] == "deployments.app:app_builder"


def test_load_config_reads_the_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump({"applications": [{"name": "x", "args": {"search": {"top_k": 7}}}]}))
    monkeypatch.setenv("RAGSERVE_CONFIG", str(path))
    assert load_config().search.top_k == 7


def test_empty_args_give_the_defaults() -> None:
    assert parse_app_config(None) == AppConfig()
    assert parse_app_config({}).encoder.max_batch_size == 32


@pytest.mark.parametrize(
    ("args", "path"),
    [
        ({"encodr": {}}, "encodr"),
        ({"encoder": {"max_batchsize": 8}}, "encoder.max_batchsize"),
        ({"search": {"milvus": {"url": "x"}}}, "search.milvus.url"),
        ({"generator": {"deployment": {"replicas": 2}}}, "generator.deployment.replicas"),
    ],
)
def test_unknown_fields_are_rejected_by_path(args: dict, path: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_app_config(args, where="test.yaml")
    assert path in str(exc.value)
    assert "test.yaml" in str(exc.value)


@pytest.mark.parametrize(
    ("args", "path"),
    [
        ({"encoder": {"max_batch_size": 0}}, "encoder.max_batch_size"),
        ({"search": {"mode": "fuzzy"}}, "search.mode"),
        ({"search": {"top_k": 101}}, "search.top_k"),
        ({"generator": {"sampling": {"temperature": 2.5}}}, "generator.sampling.temperature"),
        ({"preprocess": {"max_query_chars": "many"}}, "preprocess.max_query_chars"),
        ({"ingest": {"chunk_tokens": 64, "chunk_overlap_tokens": 64}}, "ingest"),
        (
            {"encoder": {"deployment": {"autoscaling": {"min_replicas": 3, "max_replicas": 2}}}},
            "encoder.deployment.autoscaling",
        ),
        ({"generator": {"deployment": {"max_queued_requests": 0}}}, "generator.deployment.max_queued_requests"),
        ({"encoder": {"backend": "tensorrt"}}, "encoder.backend"),
        ({"encoder": {"precision": "fp16"}}, "encoder.precision"),
        ({"encoder": {"backend": "torch", "precision": "int8"}}, "encoder"),
    ],
)
def test_bad_values_are_rejected_by_path(args: dict, path: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_app_config(args)
    assert f"{path}:" in str(exc.value)


def test_cross_field_errors_explain_themselves() -> None:
    with pytest.raises(ConfigError, match="chunk_overlap_tokens must be smaller than chunk_tokens"):
        parse_app_config({"ingest": {"chunk_tokens": 64, "chunk_overlap_tokens": 100}})
    with pytest.raises(ConfigError, match="max_replicas must be >= min_replicas"):
        parse_app_config({"search": {"deployment": {"autoscaling": {"min_replicas": 2, "max_replicas": 1}}}})


@pytest.mark.parametrize(
    ("encoder", "message"),
    [
        ({"precision": "int8"}, "precision 'int8' is not available with backend 'torch' (it runs fp32)"),
        ({"backend": "onnx", "precision": "bf16"}, "precision 'bf16' is not available with backend 'onnx' (it runs fp32, int8)"),
        ({"backend": "openvino", "precision": "int8"}, "with backend 'openvino' (it runs fp32, bf16)"),
        ({"backend": "openvino", "device": "cuda"}, "backend 'openvino' runs on the CPU only: set device cpu"),
    ],
)
def test_encoder_backend_and_precision_must_fit(encoder: dict, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_app_config({"encoder": encoder})
    assert message in str(exc.value)
    assert "encoder:" in str(exc.value)


@pytest.mark.parametrize("backend", sorted(ENCODER_PRECISIONS))
def test_every_encoder_backend_precision_pair_is_accepted(backend: str) -> None:
    for precision in ENCODER_PRECISIONS[backend]:
        enc = parse_app_config({"encoder": {"backend": backend, "precision": precision}}).encoder
        assert (enc.backend, enc.precision) == (backend, precision)


def test_the_renamed_encoder_threads_field_is_not_accepted_under_its_old_name() -> None:
    with pytest.raises(ConfigError, match="encoder.torch_threads"):
        parse_app_config({"encoder": {"torch_threads": 2}})
    assert parse_app_config({"encoder": {"threads": 2}}).encoder.threads == 2


def test_config_is_immutable() -> None:
    cfg = AppConfig()
    with pytest.raises(ValidationError):
        cfg.encoder.max_batch_size = 4  # type: ignore[misc]


def test_serve_options_fixed_replicas() -> None:
    opts = DeploymentOptions(num_replicas=3, max_ongoing_requests=5).serve_options()
    assert opts["num_replicas"] == 3
    assert "autoscaling_config" not in opts
    assert opts["max_ongoing_requests"] == 5
    # memory=None must not reach Ray as an explicit null.
    assert opts["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.0, "resources": {}}


def test_the_generator_queue_is_bounded_by_default_and_in_the_shipped_config() -> None:
    """Past its replicas' slots, a generation must be refused at once (503), not wait in Serve's queue."""
    assert AppConfig().generator.deployment.serve_options()["max_queued_requests"] == 4
    shipped = load_config(REPO / "cluster" / "serve_config.yaml").generator.deployment
    assert shipped.max_queued_requests == 4 and shipped.max_ongoing_requests == 32


def test_rolling_updates_start_replacements_first_and_the_shipped_machine_has_room_for_one() -> None:
    """A changed config replaces a one-replica stage without a gap (surge), which needs logical room
    for one more replica of any stage next to the others at their maximum (2 CPUs: the smallest
    machine the README supports)."""
    from ray.serve import deployment

    shipped = load_config(REPO / "cluster" / "serve_config.yaml")
    deps = [stage.config(shipped).deployment for stage in (*stages.enabled(shipped), stages.INGRESS)]
    assert {d.serve_options()["max_surge_percent"] for d in deps} == {100}
    deployment(lambda: None).options(**deps[0].serve_options())  # Serve accepts the option

    def most(d: DeploymentOptions) -> int:
        return d.autoscaling.max_replicas if d.autoscaling else d.num_replicas
    reserved = sum(d.resources.num_cpus * most(d) for d in deps)
    assert reserved + max(d.resources.num_cpus for d in deps) <= 2, reserved


def test_serve_options_autoscaling_replaces_num_replicas() -> None:
    auto = AutoscalingOptions(min_replicas=1, max_replicas=4, target_ongoing_requests=3)
    opts = DeploymentOptions(num_replicas=2, autoscaling=auto).serve_options()
    assert "num_replicas" not in opts
    cfg = opts["autoscaling_config"]
    assert cfg["min_replicas"] == 1 and cfg["max_replicas"] == 4
    assert cfg["target_ongoing_requests"] == 3.0
    assert "initial_replicas" not in cfg  # None is left to Ray's default


def test_every_field_is_described() -> None:
    def walk(model: type) -> list[str]:
        missing = []
        for name, field in model.model_fields.items():
            if not field.description:
                missing.append(f"{model.__name__}.{name}")
            ann = field.annotation
            for sub in (ann, *getattr(ann, "__args__", ())):
                if isinstance(sub, type) and hasattr(sub, "model_fields"):
                    missing += walk(sub)
        return missing

    assert walk(AppConfig) == []


@pytest.mark.parametrize("apps", [[], [{"name": "a"}, {"name": "b"}], None, {"name": "a"}])
def test_serve_yaml_needs_exactly_one_application(tmp_path: Path, apps: object) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump({"applications": apps}))
    with pytest.raises(ConfigError, match="exactly one"):
        load_serve_yaml(path)


def test_serve_yaml_without_applications_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    with pytest.raises(ConfigError):
        load_serve_yaml(path)


@pytest.mark.parametrize(
    ("args", "path"),
    [
        ({"search": {"top_k": 80}}, "search"),
        ({"generator": {"sampling": {"max_tokens": 4000}}}, "generator.sampling"),
        ({"search": {"deployment": {"autoscaling": {"min_replicas": 1, "max_replicas": 2, "initial_replicas": 5}}}},
         "search.deployment.autoscaling"),
    ],
)
def test_cross_field_bounds_are_rejected(args: dict, path: str) -> None:
    with pytest.raises(ConfigError, match=path.replace(".", r"\.")):
        parse_app_config(args)
