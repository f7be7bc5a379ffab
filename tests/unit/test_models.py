"""Unit tests of ``deployments.models``: resolving model references and the GGUF conversion cache.

Covers: ``resolve`` for unknown ``bundled:`` names, junk, HF ids and local paths;
``file_digest``; and ``gguf_to_safetensors``'s content-keyed cache under
``RAGSERVE_CACHE_DIR``, with ``_convert`` (torch/transformers) replaced by a stub that only
writes ``config.json`` — the real conversion is exercised by the integration tests.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from deployments import models
from deployments.errors import ConfigError


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Relative references ("org/name") must not hit a file of that name in the repo.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAGSERVE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def converts(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Path, Path]]:
    """Replace the heavy converter; record its calls."""
    calls: list[tuple[Path, Path]] = []

    def fake_convert(gguf: Path, out: Path) -> None:
        calls.append((gguf, out))
        (out / "config.json").write_text('{"model_type": "llama"}')
        (out / "model.safetensors").write_bytes(gguf.read_bytes())

    monkeypatch.setattr(models, "_convert", fake_convert)
    return calls


def _gguf(tmp_path: Path, content: bytes = b"GGUF v1") -> Path:
    path = tmp_path / "src" / "Tiny.Q4_1.gguf"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content)
    return path


def test_unknown_bundled_name_lists_known_names() -> None:
    with pytest.raises(ConfigError) as exc:
        models.resolve("bundled:nope")
    msg = str(exc.value)
    assert "nope" in msg
    for name in models.BUNDLED:
        assert name in msg


@pytest.mark.parametrize("ref", ["not a model", "a/b/c", "", "bundled"])
def test_junk_reference_is_a_config_error(ref: str) -> None:
    with pytest.raises(ConfigError, match="neither a local path"):
        models.resolve(ref)


@pytest.mark.parametrize("ref", ["org/name", "sentence-transformers/all-MiniLM-L6-v2"])
def test_hf_id_is_returned_unchanged(ref: str) -> None:
    assert models.resolve(ref) == ref


def test_local_directory_is_returned_as_is(tmp_path: Path) -> None:
    d = tmp_path / "my-model"
    d.mkdir()
    assert models.resolve(str(d)) == str(d)
    assert models.resolve("my-model") == "my-model"  # relative to the working directory


def test_bundled_models_name_their_package_and_hub_id() -> None:
    assert {"all-MiniLM-L6-v2", "SmolLM2-135M-Instruct"} <= set(models.BUNDLED)
    for b in models.BUNDLED.values():
        assert b.hf_id.count("/") == 1 and b.package.isidentifier()


def test_file_digest(tmp_path: Path) -> None:
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 3000)
    first = models.file_digest(f, chunk=1024)  # several blocks
    assert first == hashlib.sha256(b"a" * 3000).hexdigest()
    assert models.file_digest(f) == first
    f.write_bytes(b"a" * 2999 + b"b")
    assert models.file_digest(f) != first


def test_cache_dir_follows_the_env_var(tmp_path: Path) -> None:
    assert models.cache_dir() == tmp_path / "cache"


def test_conversion_is_cached_by_content(tmp_path: Path, converts: list) -> None:
    gguf = _gguf(tmp_path)
    out = models.gguf_to_safetensors(gguf)
    assert (out / "config.json").is_file()
    assert out.parent == tmp_path / "cache" / "models"
    assert out.name.startswith("Tiny.Q4_1-")
    assert len(converts) == 1

    assert models.gguf_to_safetensors(gguf) == out
    assert len(converts) == 1, "a cached conversion must not run again"

    gguf.write_bytes(b"GGUF v2")
    out2 = models.gguf_to_safetensors(gguf)
    assert out2 != out and (out2 / "config.json").is_file()
    assert (out / "config.json").is_file(), "the old conversion is left alone"
    assert len(converts) == 2


def test_resolve_converts_a_local_gguf(tmp_path: Path, converts: list) -> None:
    gguf = _gguf(tmp_path)
    resolved = Path(models.resolve(str(gguf)))
    assert (resolved / "config.json").is_file()
    assert resolved == models.gguf_to_safetensors(gguf)
    assert len(converts) == 1


def test_failed_conversion_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(gguf: Path, out: Path) -> None:
        (out / "half-written.safetensors").write_bytes(b"x")
        raise RuntimeError("out of memory")

    monkeypatch.setattr(models, "_convert", broken)
    gguf = _gguf(tmp_path)
    with pytest.raises(RuntimeError, match="out of memory"):
        models.gguf_to_safetensors(gguf)
    root = tmp_path / "cache" / "models"
    leftovers = [p.name for p in root.iterdir() if p.is_dir()]
    assert leftovers == []


def test_retry_after_a_failed_conversion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, converts: list
) -> None:
    gguf = _gguf(tmp_path)
    stub = models._convert

    def broken(gguf: Path, out: Path) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(models, "_convert", broken)
    with pytest.raises(RuntimeError):
        models.gguf_to_safetensors(gguf)
    monkeypatch.setattr(models, "_convert", stub)
    assert (models.gguf_to_safetensors(gguf) / "config.json").is_file()
    assert len(converts) == 1
