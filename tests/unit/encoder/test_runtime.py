"""Unit tests of ``deployments.encoder.runtime`` through ``Embedder``: every backend agrees with
PyTorch on the bundled all-MiniLM-L6-v2.

Covers: each (backend, precision) of ``ENCODER_PRECISIONS`` embeds English passages, Chinese
text, a one-word text and a long text, one at a time and in one mixed-length batch, with the
same dimension and unit length as the torch backend; fp32 and bf16 within cosine 0.99 of torch
on every text, int8 (quantised weights) within 0.95 on every text and 0.98 on average (measured
at export: worst 0.987, mean 0.992); a text's vector alone and in a batch agree; the forward pass really runs on the backend; token
counting is unchanged; a missing runtime package is a ConfigError naming it. The exports are
real and made once for the module, in a temporary cache.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("sentence_transformers")
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

from deployments import models  # noqa: E402
from deployments.config import ENCODER_PRECISIONS, EncoderConfig  # noqa: E402
from deployments.encoder import runtime  # noqa: E402
from deployments.encoder.model import Embedder  # noqa: E402
from deployments.errors import ConfigError  # noqa: E402

#: Smallest cosine to the torch vector, per text and on average, of each precision.
BOUNDS = {"fp32": (0.99, 0.999), "bf16": (0.99, 0.995), "int8": (0.95, 0.98)}
#: Smallest cosine between a text's vector alone and in a mixed batch. int8 quantises the
#: activations with one scale per batch tensor, so a text's vector depends a little on its
#: batch-mates (0.985 at worst, measured); the others only pad.
BATCH_AGREEMENT = {"fp32": 0.999, "bf16": 0.999, "int8": 0.97}
PAIRS = [(b, p) for b, ps in ENCODER_PRECISIONS.items() if b != "torch" for p in ps]


def _texts() -> list[str]:
    data = resources.files("deployments") / "data" / "eval"
    en = [json.loads(line)["text"] for line in (data / "passages.en.jsonl").read_text().splitlines()[:12]]
    zh = [json.loads(line)["text"] for line in (data / "passages.zh.jsonl").read_text().splitlines()[:4]]
    return [*en, *zh, "pump", "What does Nimbus Vault error code E-4471 mean?", " ".join(en[:4])]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        models.resolve("bundled:all-MiniLM-L6-v2")
    except ConfigError as e:  # the cpu extra is not installed
        pytest.skip(f"bundled encoder not available: {e}")
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAGSERVE_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="module")
def reference(cache: Path) -> tuple[Embedder, np.ndarray]:
    emb = Embedder(EncoderConfig())
    return emb, np.array(emb.embed(_texts()))


@pytest.mark.parametrize(("backend", "precision"), PAIRS)
def test_backend_agrees_with_torch(cache: Path, reference: tuple[Embedder, np.ndarray], backend: str,
                                   precision: str) -> None:
    torch_emb, want = reference
    emb = Embedder(EncoderConfig(backend=backend, precision=precision))
    assert isinstance(emb.model[0].model, runtime.RuntimeModel)
    assert emb.model[0].model.backend == f"{backend}/{precision}"
    assert emb.dim == torch_emb.dim == 384
    texts = _texts()
    batched = np.array(emb.embed(texts))
    one_by_one = np.array([emb.embed([t])[0] for t in texts])
    worst, mean = BOUNDS[precision]
    for got in (batched, one_by_one):
        assert got.shape == want.shape
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)
        cos = (got * want).sum(axis=1)
        assert cos.min() >= worst, f"{backend}/{precision}: worst cosine {cos.min():.4f} (text {cos.argmin()})"
        assert cos.mean() >= mean, f"{backend}/{precision}: mean cosine {cos.mean():.4f}"
    # Padding must not change a text's vector: alone or in a mixed-length batch, (nearly) the same.
    assert (batched * one_by_one).sum(axis=1).min() >= BATCH_AGREEMENT[precision]
    assert emb.input_tokens(texts) == torch_emb.input_tokens(texts)
    assert emb.count_tokens(texts[0]) == torch_emb.count_tokens(texts[0])


def test_exports_land_in_the_cache(cache: Path, reference: tuple[Embedder, np.ndarray]) -> None:
    for backend, precision in PAIRS:
        Embedder(EncoderConfig(backend=backend, precision=precision))
    made = sorted(p.name.split("-", 5)[-1] for p in (cache / "encoders").iterdir() if not p.name.startswith("."))
    assert made == ["onnx-fp32-v1", "onnx-int8-v1", "openvino-fp32-v1"]  # bf16 runs the fp32 IR
    # (names: all-MiniLM-L6-v2-<weights hash>-<backend>-<variant>-v<version>)


def test_a_missing_runtime_package_is_a_config_error(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(runtime.PACKAGES, "onnx", ("onnxruntime_not_installed_here", "onnx"))
    with pytest.raises(ConfigError, match=r"needs the package\(s\) onnxruntime_not_installed_here \(pip"):
        Embedder(EncoderConfig(backend="onnx"))
