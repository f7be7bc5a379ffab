"""Engine settings resolved from hardware facts (fed by hand: no CPU of this machine involved)."""

from __future__ import annotations

import pytest

from deployments.generator.hardware import EngineSettings, HardwareFacts, cpu_list, resolve

EPYC_ZEN3 = HardwareFacts(cpu_model="AMD EPYC", cpu_flags=("avx2", "fma"), allowed_cpus=(0, 1),
                          tcmalloc="libtcmalloc_minimal.so.4", iomp="/venv/lib/libiomp5.so")
SAPPHIRE_RAPIDS = HardwareFacts(
    cpu_model="Intel(R) Xeon(R) Platinum 8480+", cpu_flags=("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile",
                                                             "amx_bf16"),
    allowed_cpus=tuple(range(8)))
COOPER_LAKE = HardwareFacts(cpu_model="Intel(R) Xeon(R) Gold 6348H", cpu_flags=("avx2", "avx512f", "avx512_bf16"),
                            allowed_cpus=(0, 1, 2, 3))
SKYLAKE = HardwareFacts(cpu_model="Intel(R) Xeon(R) Gold 6148", cpu_flags=("avx2", "avx512f"), allowed_cpus=(0, 1))
H100 = HardwareFacts(cpu_model="AMD EPYC 9654", cpu_flags=("avx2", "avx512f", "avx512_bf16"),
                     allowed_cpus=tuple(range(16)), gpu="NVIDIA H100 80GB HBM3")


@pytest.mark.parametrize(("facts", "dtype"), [
    (EPYC_ZEN3, "float32"),         # AVX2 only: bf16 would be emulated
    (SKYLAKE, "float32"),           # AVX-512 without its BF16 extension is still no native bf16
    (COOPER_LAKE, "bfloat16"),      # AVX-512 BF16
    (SAPPHIRE_RAPIDS, "bfloat16"),  # AMX
    (H100, "auto"),                 # on a GPU vLLM picks the checkpoint's dtype
])
def test_dtype_follows_native_bf16(facts: HardwareFacts, dtype: str) -> None:
    s = resolve(facts)
    assert s.dtype == dtype
    assert s.device == ("cuda" if facts.gpu else "cpu")


def test_config_dtype_wins_even_where_it_is_slow() -> None:
    s = resolve(EPYC_ZEN3, dtype="bfloat16")
    assert (s.dtype, s.dtype_reason) == ("bfloat16", "set in config")


def test_threads_are_the_reserved_cpus_rounded_up_within_the_affinity() -> None:
    assert resolve(SAPPHIRE_RAPIDS, num_cpus=4).threads == 4
    assert resolve(SAPPHIRE_RAPIDS, num_cpus=2.5).threads == 3
    assert resolve(SAPPHIRE_RAPIDS, num_cpus=0.5).threads == 1
    assert resolve(EPYC_ZEN3, num_cpus=8).threads == 2  # never more than the CPUs the process may use
    assert resolve(EPYC_ZEN3, num_cpus=1, threads=2).threads == 2  # config wins


def test_binding_covers_the_affinity_or_is_left_to_the_os() -> None:
    # All the process's CPUs: bound to them (vLLM's auto would keep one for its scheduler).
    assert resolve(EPYC_ZEN3, num_cpus=2).threads_bind == "0-1"
    # Fewer threads than CPUs: another replica may share the node, Ray pins nothing: no binding.
    assert resolve(SAPPHIRE_RAPIDS, num_cpus=4).threads_bind == "nobind"
    assert resolve(SAPPHIRE_RAPIDS, num_cpus=4, threads_bind="4-7").threads_bind == "4-7"


def test_preloads_found_and_missing_are_reported() -> None:
    s = resolve(EPYC_ZEN3, num_cpus=2)
    assert s.preload == ("libtcmalloc_minimal.so.4", "/venv/lib/libiomp5.so")
    assert s.missing_preloads == ()
    bare = resolve(SKYLAKE)
    assert bare.preload == () and len(bare.missing_preloads) == 2
    assert resolve(EPYC_ZEN3, preload="none").preload == ()
    assert resolve(EPYC_ZEN3, preload=("/opt/libjemalloc.so",)).preload == ("/opt/libjemalloc.so",)


def test_engine_environment_of_a_cpu_and_a_gpu_engine() -> None:
    env = resolve(EPYC_ZEN3, num_cpus=2).environment(kv_cache_gib=3)
    assert env == {"VLLM_CPU_KVCACHE_SPACE": "3", "VLLM_CPU_OMP_THREADS_BIND": "0-1", "OMP_NUM_THREADS": "2",
                   "LD_PRELOAD": "libtcmalloc_minimal.so.4:/venv/lib/libiomp5.so"}
    gpu: EngineSettings = resolve(H100, num_cpus=4)
    assert gpu.threads is None and gpu.environment(kv_cache_gib=3) == {}


@pytest.mark.parametrize(("cpus", "text"), [
    ((0, 1), "0-1"), ((3,), "3"), ((0, 1, 2, 5, 7, 8), "0-2,5,7-8"), ((2, 0, 1), "0-2"),
])
def test_cpu_list_syntax(cpus: tuple[int, ...], text: str) -> None:
    assert cpu_list(cpus) == text


def test_detect_reads_this_machine() -> None:
    """The one impure function: whatever this machine is, the facts are consistent."""
    pytest.importorskip("torch")
    f = HardwareFacts.detect(gpu=False)
    assert f.cpu_model and f.allowed_cpus
    assert set(f.cpu_flags) <= {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
                                "amx_int8"}
