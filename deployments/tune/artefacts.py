"""Trained models as versioned artefacts in ragserve's model cache.

An artefact is a directory ``<cache>/tuned/<kind>-<version>`` holding a sentence-transformers
model and :data:`MANIFEST` (what it was trained from and how it scored). Its version is a hash of
everything that decides the weights: the base model's files, the training data and the training
parameters, so the same inputs give the same name (a finished run is reused, not trained again)
and a config that names ``tuned:<kind>-<version>`` names exactly one set of weights.

Artefacts are written whole or not at all, as the converted generator weights are
(``models.build_once``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from deployments.errors import ConfigError

Kind = Literal["encoder", "reranker"]
#: The artefact's description, next to the weights.
MANIFEST = "ragserve-tune.json"
#: Model references naming an artefact: ``tuned:encoder-<version>`` (``protocol.types.TUNED_ENCODER``).
PREFIX = "tuned:"
VERSION_CHARS = 16


def root() -> Path:
    """Where artefacts live (under ``RAGSERVE_CACHE_DIR``, shared by the cluster's pods)."""
    from deployments.models import cache_dir

    return cache_dir() / "tuned"


def digest_files(paths: Iterable[Path]) -> str:
    """sha256 over files' names (relative to their common root) and contents, in name order."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode() + b"\0")
        with p.open("rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def digest_model(path: Path) -> str:
    """The content hash of a model directory (weights, config, tokenizer; not the manifest)."""
    files = [p for p in path.rglob("*") if p.is_file() and p.name != MANIFEST and ".cache" not in p.parts]
    if not files:
        raise ConfigError(f"model directory {path} is empty")
    h = hashlib.sha256()
    for p in sorted(files):
        h.update(str(p.relative_to(path)).encode() + b"\0" + digest_files([p]).encode())
    return h.hexdigest()


def version(base_digest: str, data_digest: str, params: dict[str, Any]) -> str:
    """The artefact version of a training run: base model, data and parameters."""
    blob = json.dumps({"base": base_digest, "data": data_digest, "params": params}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:VERSION_CHARS]


def name(kind: Kind, ver: str) -> str:
    return f"{kind}-{ver}"


def reference(kind: Kind, ver: str) -> str:
    """The model reference a config uses for an artefact."""
    return f"{PREFIX}{name(kind, ver)}"


def path_of(ref: str) -> Path:
    """The directory of a ``tuned:`` reference.

    Raises:
        ConfigError: a malformed reference, or an artefact that is not in this cache (it was trained
            elsewhere: copy the directory into ``<RAGSERVE_CACHE_DIR>/tuned/``).
    """
    art = ref.removeprefix(PREFIX)
    kind, _, ver = art.partition("-")
    if kind not in ("encoder", "reranker") or len(ver) != VERSION_CHARS or not ver.isalnum():
        raise ConfigError(f"{ref!r} is not a tuned model reference (tuned:encoder-<16 hex> or tuned:reranker-<16 hex>)")
    path = root() / art
    if not (path / MANIFEST).exists():
        raise ConfigError(f"tuned model {art} is not in the model cache ({root()}): train it with `ragserve tune` "
                          "or copy its directory there")
    return path


def manifest(path: Path) -> dict[str, Any]:
    """An artefact's manifest."""
    return json.loads((path / MANIFEST).read_text(encoding="utf-8"))


def publish(model_dir: Path, kind: Kind, ver: str, meta: dict[str, Any]) -> Path:
    """Copy a trained model into the cache as artefact ``kind-ver``, whole or not at all
    (``models.build_once``); returns its path. An artefact that exists already is kept (same
    version: same weights)."""
    from deployments.models import build_once

    def build(tmp: Path) -> None:
        shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
        (tmp / MANIFEST).write_text(json.dumps({"kind": kind, "version": ver, **meta}, indent=2, sort_keys=True),
                                    encoding="utf-8")

    return build_once(root() / name(kind, ver), build, MANIFEST)


def update_manifest(path: Path, **fields: Any) -> None:
    """Add fields to an artefact's manifest (e.g. its evaluation), written atomically."""
    data = manifest(path) | fields
    tmp = path / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path / MANIFEST)
