"""Worker-group sizing for the RayService: which pods each stage lands on, and how many.

Pure arithmetic over a validated :class:`deployments.config.AppConfig` and the stage registry
(:data:`deployments.stages.DEPLOYMENTS`), used by :mod:`deployments.render.k8s`. Every deployment
enabled in the config is placed (an optional stage such as rerank only when ``enabled``). Placement
follows the stages' own resources: a stage of node type ``generator`` that asks for GPUs runs on GPU
pods; every other stage (and a CPU generator) runs on CPU pods. A group's min/max pods are derived
from the stages' min/max replicas, so the Kubernetes side can never disagree with the Serve config.

Fractions (not floats) keep 0.1-CPU replicas exact, as Ray's own resource accounting is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from deployments import stages as registry
from deployments.config import AppConfig, DeploymentOptions
from deployments.stages import Stage


class CapacityError(ValueError):
    """A worker group cannot hold the replicas the config may scale to."""


@dataclass(frozen=True)
class GroupSize:
    """Pods of one worker group: kept running, and the most the autoscaler may start."""

    min_pods: int
    max_pods: int


def replica_bounds(opts: DeploymentOptions) -> tuple[int, int]:
    """(min, max) replicas of a stage: its autoscaling bounds, or its fixed count twice."""
    if opts.autoscaling is None:
        return opts.num_replicas, opts.num_replicas
    return opts.autoscaling.min_replicas, opts.autoscaling.max_replicas


def cpu_pods_needed(sizes: list[Fraction], cpus: int) -> GroupSize:
    """Pods for replicas of the given CPU sizes, on pods of ``cpus`` logical CPUs.

    The minimum is the plain lower bound ``ceil(total / cpus)`` (more pods come on demand). The
    maximum must always suffice: the autoscaler starts a pod only for a replica that fits in no
    running pod, so every pod but the last holds more than ``cpus - largest`` and
    ``ceil(total / (cpus - largest))`` pods hold any arrival order (the any-fit bound).

    Raises:
        CapacityError: one replica is larger than a pod.
    """
    sizes = [s for s in sizes if s > 0]  # zero-CPU replicas fit anywhere
    if not sizes:
        return GroupSize(0, 0)
    largest, total = max(sizes), sum(sizes)
    if largest > cpus:
        raise CapacityError(f"a replica needs {float(largest)} CPUs but a CPU pod has {cpus}")
    slack = cpus - largest
    upper = len(sizes) if slack == 0 else min(len(sizes), max(1, math.ceil(total / slack)))
    return GroupSize(math.ceil(total / cpus), upper)


def generators_per_pod(generator: DeploymentOptions, gpus_per_pod: int) -> int:
    """Generator replicas one GPU pod holds (replicas never straddle pods).

    Raises:
        CapacityError: the generator asks for no GPU, or for more than a pod has.
    """
    need = Fraction(str(generator.resources.num_gpus))
    if need <= 0:
        raise CapacityError("a GPU worker group is configured but generator.deployment needs no GPU")
    if need > gpus_per_pod:
        raise CapacityError(f"a generator replica needs {float(need)} GPUs but a GPU pod has {gpus_per_pod}")
    return math.floor(gpus_per_pod / need)


def gpu_pods_needed(generator: DeploymentOptions, gpus_per_pod: int) -> GroupSize:
    """GPU pods for the generator at its min and max replicas (identical replicas pack exactly)."""
    per_pod = generators_per_pod(generator, gpus_per_pod)
    low, high = replica_bounds(generator)
    return GroupSize(math.ceil(low / per_pod), math.ceil(high / per_pod))


def check_gpu_capacity(generator: DeploymentOptions, gpus_per_pod: int, max_pods: int) -> None:
    """Raise :class:`CapacityError` unless ``max_pods`` GPU pods hold the generator's max replicas.

    This implies ``max_pods * gpus_per_pod >= max_replicas * num_gpus`` and also accounts for
    replicas not straddling pods (three 0.75-GPU replicas need three 1-GPU pods, not 2.25).
    """
    per_pod = generators_per_pod(generator, gpus_per_pod)
    _, max_replicas = replica_bounds(generator)
    if max_pods * per_pod < max_replicas:
        raise CapacityError(
            f"gpu-workers: {max_pods} pods x {gpus_per_pod} GPUs hold {max_pods * per_pod} generator "
            f"replicas of {generator.resources.num_gpus} GPUs, but max_replicas is {max_replicas}"
        )


def _gpu_stage(cfg: AppConfig, stages: tuple[Stage, ...]) -> Stage | None:
    """The one enabled stage that asks for GPUs (None when none does).

    Raises:
        CapacityError: a stage not of node type ``generator`` asks for GPUs, or several do.
    """
    found = []
    for stage in registry.enabled(cfg, stages):
        if stage.config(cfg).deployment.resources.num_gpus > 0:
            if stage.node_type != "generator":
                raise CapacityError(f"{stage.name}: only the generator runs on GPU pods")
            found.append(stage)
    if len(found) > 1:
        raise CapacityError(f"one GPU stage per GPU worker group, got {[s.name for s in found]}")
    return found[0] if found else None


def plan_groups(
    cfg: AppConfig, cpu_pod_cpus: int, gpu_pod: tuple[int, int] | None,
    stages: tuple[Stage, ...] = registry.DEPLOYMENTS,
) -> dict[str, tuple[GroupSize, int]]:
    """Worker group name -> (pods, Ray logical CPUs per pod).

    Args:
        cfg: the validated application config.
        cpu_pod_cpus: CPUs of a CPU worker pod.
        gpu_pod: (GPUs, container CPUs) of a GPU worker pod, or None when there is no GPU group.
        stages: the deployments to place (those enabled in ``cfg`` are).

    Raises:
        CapacityError: a stage cannot be placed, or its replicas do not fit.
    """
    gpu_stage = _gpu_stage(cfg, stages)
    lows: list[Fraction] = []
    highs: list[Fraction] = []
    for stage in registry.enabled(cfg, stages):
        opts: DeploymentOptions = stage.config(cfg).deployment
        if opts.resources.resources:
            raise CapacityError(f"{stage.name}: custom Ray resources are not placed by the renderer")
        if stage is not gpu_stage:
            low, high = replica_bounds(opts)
            lows += [Fraction(str(opts.resources.num_cpus))] * low
            highs += [Fraction(str(opts.resources.num_cpus))] * high
    at_min, at_max = cpu_pods_needed(lows, cpu_pod_cpus), cpu_pods_needed(highs, cpu_pod_cpus)
    cpu_size = GroupSize(at_min.min_pods, max(at_min.min_pods, at_max.max_pods, 1))
    plan = {"cpu-workers": (cpu_size, cpu_pod_cpus)}
    if gpu_pod is None:
        if gpu_stage is not None:
            raise CapacityError(f"{gpu_stage.config_field}.deployment needs GPUs but the overlay has no gpu_workers")
        return plan
    if gpu_stage is None:
        raise CapacityError("a GPU worker group is configured but generator.deployment needs no GPU")
    gen = gpu_stage.config(cfg).deployment
    gpus, container_cpus = gpu_pod
    size = gpu_pods_needed(gen, gpus)
    check_gpu_capacity(gen, gpus, size.max_pods)
    # GPU pods advertise exactly the generators' CPUs, so no CPU-only replica is scheduled there.
    cpus = Fraction(str(gen.resources.num_cpus)) * generators_per_pod(gen, gpus)
    if cpus.denominator != 1 or cpus > container_cpus:
        raise CapacityError(
            f"generator CPUs per GPU pod ({float(cpus)}) must be a whole number "
            f"<= gpu_workers.cpus ({container_cpus})"
        )
    plan["gpu-workers"] = (size, int(cpus))
    return plan
