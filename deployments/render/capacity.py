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


@dataclass(frozen=True)
class Replicas:
    """Replicas of one stage on CPU pods: their CPUs each, how many, and the most on one pod."""

    stage: str
    cpus: Fraction
    count: int
    per_pod: int | None = None  # the stage's max_replicas_per_node; None: no limit


def min_spread(r: Replicas) -> int:
    """Pods the replicas occupy at least: ``ceil(count / per_pod)`` (any placement Serve picks)."""
    if r.count == 0:
        return 0
    return 1 if r.per_pod is None else math.ceil(r.count / r.per_pod)


def first_fit(replicas: list[Replicas], pods: int, cpus: int) -> list[dict[str, int]] | None:
    """A placement of ``replicas`` on ``pods`` pods of ``cpus`` CPUs (largest first, each on the
    first pod with room and below its stage's cap): per pod, replicas by stage; None if they do not fit."""
    placed: list[dict[str, int]] = [{} for _ in range(pods)]
    free = [Fraction(cpus)] * pods
    for r in sorted(replicas, key=lambda r: r.cpus, reverse=True):
        for _ in range(r.count):
            pod = next((i for i in range(pods) if r.cpus <= free[i]
                        and (r.per_pod is None or placed[i].get(r.stage, 0) < r.per_pod)), None)
            if pod is None:
                return None
            free[pod] -= r.cpus
            placed[pod][r.stage] = placed[pod].get(r.stage, 0) + 1
    return placed


def cpu_group_size(at_min: list[Replicas], at_max: list[Replicas], cpus: int) -> GroupSize:
    """Pods of the CPU group: enough at minimum scale to hold every replica at once (and each
    stage's spread), and at most what any arrival order may need at maximum scale.

    The maximum extends :func:`cpu_pods_needed`'s any-fit bound to per-pod caps: when the autoscaler
    starts a pod for a replica of stage ``s``, each running pod is either CPU-full (more than
    ``cpus - largest`` used: fewer than ``ceil(total / slack)`` such pods) or holds ``s``'s cap
    (fewer than ``ceil(count_s / cap_s)``), so ``ceil(total / slack) + max_s(ceil(count_s / cap_s) - 1)``
    pods always suffice.

    Raises:
        CapacityError: one replica is larger than a pod.
    """
    def sizes(rs: list[Replicas]) -> list[Fraction]:
        return [r.cpus for r in rs for _ in range(r.count)]

    low = cpu_pods_needed(sizes(at_min), cpus).min_pods
    low = max([low, *(min_spread(r) for r in at_min)])
    while low and first_fit(at_min, low, cpus) is None:
        low += 1
    uncapped = cpu_pods_needed(sizes(at_max), cpus).max_pods
    extra = max([0, *(min_spread(r) - 1 for r in at_max if r.per_pod is not None)])
    high = min(max(uncapped, 1) + extra, sum(r.count for r in at_max))
    return GroupSize(low, max(low, high, 1))


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
    fit = math.floor(gpus_per_pod / need)
    return fit if generator.max_replicas_per_node is None else min(fit, generator.max_replicas_per_node)


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


def gpu_stage(cfg: AppConfig, stages: tuple[Stage, ...] = registry.DEPLOYMENTS) -> Stage | None:
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


def cpu_replicas(cfg: AppConfig, stages: tuple[Stage, ...] = registry.DEPLOYMENTS,
                 on_gpu: Stage | None = None) -> tuple[list[Replicas], list[Replicas]]:
    """The replicas every enabled stage but ``on_gpu`` puts on CPU pods, at min and at max scale.

    Raises:
        CapacityError: a stage asks for custom Ray resources (no pod advertises any).
    """
    at_min, at_max = [], []
    for stage in registry.enabled(cfg, stages):
        opts: DeploymentOptions = stage.config(cfg).deployment
        if opts.resources.resources:
            raise CapacityError(f"{stage.name}: custom Ray resources are not placed by the renderer")
        if stage is not on_gpu:
            low, high = replica_bounds(opts)
            cpus = Fraction(str(opts.resources.num_cpus))
            at_min.append(Replicas(stage.name, cpus, low, opts.max_replicas_per_node))
            at_max.append(Replicas(stage.name, cpus, high, opts.max_replicas_per_node))
    return at_min, at_max


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
    on_gpu = gpu_stage(cfg, stages)
    at_min, at_max = cpu_replicas(cfg, stages, on_gpu)
    plan = {"cpu-workers": (cpu_group_size(at_min, at_max, cpu_pod_cpus), cpu_pod_cpus)}
    if gpu_pod is None:
        if on_gpu is not None:
            raise CapacityError(f"{on_gpu.config_field}.deployment needs GPUs but the overlay has no gpu_workers")
        return plan
    if on_gpu is None:
        raise CapacityError("a GPU worker group is configured but generator.deployment needs no GPU")
    gen = on_gpu.config(cfg).deployment
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
