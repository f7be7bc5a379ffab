"""Unit tests of ``deployments.encoder.export``: the cache of the encoder's ONNX/OpenVINO exports.

Covers: the cache key (weights hash, backend, variant, version, a readable name); the weights
hash (stable for equal weights, changed by one weight or the config); one export per key, reused
by later calls and made once under concurrent callers; every variant built from the one cached
fp32 ONNX file; a failed export leaving nothing behind and a retry succeeding. The exports are
real (torch.onnx, ONNX Runtime's quantiser, OpenVINO) on a tiny randomly initialised BERT, so
each takes well under a second.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

from deployments.encoder import export  # noqa: E402

NAMES = ("input_ids", "attention_mask", "token_type_ids")


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RAGSERVE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "encoders"


def _tiny_bert(seed: int = 0, **overrides) -> "transformers.BertModel":
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=32, **overrides)
    return transformers.BertModel(cfg).eval()


@pytest.fixture
def onnx_exports(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record every fp32 ONNX export (the real one runs)."""
    calls: list[Path] = []
    real = export.export_onnx

    def spy(model, names, path):
        calls.append(path)
        real(model, names, path)

    monkeypatch.setattr(export, "export_onnx", spy)
    return calls


def test_cache_key_names_model_hash_backend_variant_and_version() -> None:
    key = export.cache_key("bundled:all-MiniLM-L6-v2", "ab" * 32, "onnx", "int8")
    assert key == f"all-MiniLM-L6-v2-{'ab' * 8}-onnx-int8-v{export.EXPORT_VERSION}"
    assert export.cache_key("sentence-transformers/all-MiniLM-L6-v2", "ab" * 32, "onnx", "int8") == key
    assert export.cache_key("/models/my model/", "cd" * 32, "openvino", "fp32").startswith("my_model-cdcdcdcd")
    keys = {export.cache_key("m", d, b, v) for d in ("a" * 64, "b" * 64) for b in ("onnx", "openvino")
            for v in ("fp32", "int8")}
    assert len(keys) == 8


def test_weights_digest_is_stable_and_follows_weights_and_config() -> None:
    a, b = _tiny_bert(0), _tiny_bert(0)
    assert export.weights_digest(a) == export.weights_digest(b)
    with torch.no_grad():
        b.encoder.layer[0].output.dense.weight[0, 0] += 1e-3
    assert export.weights_digest(a) != export.weights_digest(b)
    assert export.weights_digest(_tiny_bert(0, layer_norm_eps=1e-5)) != export.weights_digest(a)


def test_an_export_is_made_once_and_reused(_cache: Path, onnx_exports: list[Path]) -> None:
    model = _tiny_bert()
    path = export.exported(model, NAMES, "tiny", "onnx", "fp32")
    assert path.name == "model.onnx" and path.is_file()
    assert path.parent.parent == _cache
    assert path.parent.name == export.cache_key("tiny", export.weights_digest(model), "onnx", "fp32")
    mtime = path.stat().st_mtime_ns

    assert export.exported(_tiny_bert(), NAMES, "tiny", "onnx", "fp32") == path  # a fresh load, same weights
    assert len(onnx_exports) == 1, "a cached export must not run again"
    assert path.stat().st_mtime_ns == mtime

    other = export.exported(_tiny_bert(seed=1), NAMES, "tiny", "onnx", "fp32")
    assert other != path and other.is_file() and path.is_file()
    assert len(onnx_exports) == 2


def test_every_variant_is_built_from_the_one_cached_fp32_file(_cache: Path, onnx_exports: list[Path]) -> None:
    model = _tiny_bert()
    int8 = export.exported(model, NAMES, "tiny", "onnx", "int8")
    xml = export.exported(model, NAMES, "tiny", "openvino", "fp32")
    assert int8.is_file() and int8.parent.name.endswith("-onnx-int8-v1")
    assert xml.name == "model.xml" and xml.with_suffix(".bin").is_file()
    assert len(onnx_exports) == 1
    assert sorted(p.name.rsplit("-", 3)[1] for p in _cache.iterdir() if not p.name.startswith(".")) == [
        "onnx", "onnx", "openvino"]
    with pytest.raises(ValueError, match="no int8 export for backend openvino"):
        export.exported(model, NAMES, "tiny", "openvino", "int8")


def test_concurrent_callers_get_one_export(_cache: Path, onnx_exports: list[Path]) -> None:
    model = _tiny_bert()
    paths: list[Path] = []
    threads = [threading.Thread(target=lambda: paths.append(export.exported(model, NAMES, "tiny", "onnx", "fp32")))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(paths) == 4 and len(set(paths)) == 1
    assert len(onnx_exports) == 1


def test_a_failed_export_leaves_nothing_and_a_retry_works(
    _cache: Path, monkeypatch: pytest.MonkeyPatch, onnx_exports: list[Path]
) -> None:
    spy = export.export_onnx

    def broken(model, names, path):
        path.write_bytes(b"half a model")
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "export_onnx", broken)
    model = _tiny_bert()
    with pytest.raises(RuntimeError, match="disk full"):
        export.exported(model, NAMES, "tiny", "onnx", "fp32")
    assert [p for p in _cache.iterdir() if p.is_dir()] == []  # neither the target nor a temporary dir

    monkeypatch.setattr(export, "export_onnx", spy)
    assert export.exported(model, NAMES, "tiny", "onnx", "fp32").is_file()
    assert len(onnx_exports) == 1
