"""Versioned artefacts in the model cache: names, references, atomic publication."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployments import models
from deployments.errors import ConfigError
from deployments.tune import artefacts


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("RAGSERVE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def model_dir(root: Path, weights: bytes = b"w1") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.safetensors").write_bytes(weights)
    (root / "config.json").write_text("{}")
    return root


def test_the_version_changes_with_the_base_the_data_and_every_parameter(tmp_path: Path) -> None:
    a = artefacts.digest_model(model_dir(tmp_path / "a"))
    b = artefacts.digest_model(model_dir(tmp_path / "b", b"w2"))
    v = artefacts.version(a, "d1", {"lr": 2e-5, "epochs": 1})
    assert v == artefacts.version(a, "d1", {"epochs": 1, "lr": 2e-5})  # order does not matter
    assert len({v, artefacts.version(b, "d1", {"lr": 2e-5, "epochs": 1}),
                artefacts.version(a, "d2", {"lr": 2e-5, "epochs": 1}),
                artefacts.version(a, "d1", {"lr": 3e-5, "epochs": 1})}) == 4


def test_the_manifest_is_not_part_of_a_models_digest(tmp_path: Path) -> None:
    d = model_dir(tmp_path / "m")
    before = artefacts.digest_model(d)
    (d / artefacts.MANIFEST).write_text("{}")
    assert artefacts.digest_model(d) == before


def test_a_published_artefact_resolves_by_reference_and_is_kept(tmp_path: Path) -> None:
    src = model_dir(tmp_path / "trained")
    path = artefacts.publish(src, "encoder", "0123456789abcdef", {"base": "bundled:x"})
    ref = artefacts.reference("encoder", "0123456789abcdef")
    assert ref == "tuned:encoder-0123456789abcdef"
    assert models.resolve(ref) == str(path) and (path / "model.safetensors").read_bytes() == b"w1"
    assert artefacts.manifest(path) == {"kind": "encoder", "version": "0123456789abcdef", "base": "bundled:x"}
    # The same version again: the first copy stays (same inputs, same weights).
    assert artefacts.publish(model_dir(tmp_path / "other", b"w2"), "encoder", "0123456789abcdef", {}) == path
    assert (path / "model.safetensors").read_bytes() == b"w1"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".build-")]  # no temporary left behind
    artefacts.update_manifest(path, offered=True)
    assert artefacts.manifest(path)["offered"] is True


@pytest.mark.parametrize("ref, message", [
    ("tuned:encoder-0123", "is not a tuned model reference"),
    ("tuned:decoder-0123456789abcdef", "is not a tuned model reference"),
    ("tuned:encoder-0123456789abcdef", "is not in the model cache"),
])
def test_bad_or_missing_references_name_the_problem(ref: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        models.resolve(ref)
