"""Per-stage autoscaling signals: the custom Ray Serve policies each stage can scale on.

Ray Serve's built-in policy scales a deployment on its *ongoing requests* (running + queued,
counted by the callers' handles). That is the right signal for preprocess and search, whose
calls are short and uniform, and for the ingress, whose in-flight requests are mostly
generation streams (so it follows the generator's load). Two stages need something else:

* **encoder** (``queue``): one ``embed`` call (``/v1/embeddings``, ingestion) carries up to
  256 texts but counts as one request. The replicas report the texts waiting in their
  ``@serve.batch`` queue (:data:`ENCODER_QUEUED_TEXTS`); the policy scales on whichever is larger,
  that backlog or the request count.
* **generator** (``generator``): a streamed generation counts as running at its caller's handle
  until the ingress has read the whole stream, and such handle-side counts have leaked before
  (ray-project/ray#61551: a composed streaming deployment pinned at 2 replicas after the load
  drained, because rejected requests were never decremented; fixed by ray-project/ray#61920,
  which Ray 2.60 contains, but the policy should not depend on it). The replicas report what
  their vLLM engine actually holds (waiting + running sequences, :data:`GENERATOR_SEQUENCES`);
  the policy adds only the requests still *queued* at the handles (not yet on any replica) and
  ignores handle-side running counts.

A policy returns a raw desired replica count; Ray applies the rest, as for its own policy:
``upscale_delay_s`` / ``downscale_delay_s``, scaling factors and the ``min``/``max`` bounds
(``ray.serve.autoscaling_policy._apply_autoscaling_config``). Every policy here returns 0 for
no load, so a drained stage always goes back to ``min_replicas`` after ``downscale_delay_s``;
and it falls back to Serve's own request count when no replica has reported its signal (a
replica still starting, or a stats method Ray disabled), so a missing signal never pins a count.
While replicas the policy asked for are still starting and there is work, it never asks for fewer
than the current target (:func:`hold_while_starting`): a starting replica loads its model on the
CPUs the load saturates, the running replicas' reports then dip or go missing, and cancelling the
start because of that made the encoder flap 1 -> 2 -> 1 -> 2 under a constant load.

Ray pickles this module *by value* into the Serve controller (``AutoscalingPolicy``), which may
not have ragserve on its path: it imports nothing from ragserve.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

#: Replica-reported metric (``Encoder.record_autoscaling_stats``): texts waiting for a batch.
ENCODER_QUEUED_TEXTS = "rag_encoder_queued_texts"
#: Replica-reported metric (``Generator.record_autoscaling_stats``): sequences in the vLLM
#: engine, waiting + running (requests added to the engine and not finished).
GENERATOR_SEQUENCES = "rag_generator_engine_sequences"
#: Replica-reported metric: sequences beyond the engine's ``max_num_seqs`` (its waiting queue).
GENERATOR_WAITING = "rag_generator_engine_waiting"

#: Import paths of the policies, by the name used in ``AutoscalingOptions.policy``.
POLICY_PATHS: dict[str, str] = {
    "queue": "deployments.autoscaling:EncoderQueuePolicy",
    "generator": "deployments.autoscaling:GeneratorPolicy",
}


# --------------------------------------------------------------------------- pure functions
def desired_replicas(load: float, target_per_replica: float, current: int, tolerance: float) -> float:
    """Replicas that carry ``load`` at ``target_per_replica`` each, with a dead band.

    Like Kubernetes' HPA: while the load per replica is within ``tolerance`` of the target
    (``|load / (current * target) - 1| <= tolerance``) the current count is kept, so a load
    hovering at a replica boundary does not flap between two counts. No load always gives 0
    (the caller's ``min_replicas`` then applies), whatever the tolerance.

    Args:
        load: total work of the deployment in the policy's unit (requests, texts, sequences).
        target_per_replica: work one replica should carry (``target_ongoing_requests``).
        current: running replicas now.
        tolerance: relative dead band, 0 (none) to <1.

    Returns:
        A float; Ray rounds it up and applies delays and bounds.
    """
    if target_per_replica <= 0:
        raise ValueError("target_per_replica must be > 0")
    if load <= 0:
        return 0.0
    if current > 0 and abs(load / (current * target_per_replica) - 1.0) <= tolerance:
        return float(current)
    return load / target_per_replica


def hold_while_starting(desired: float, load: float, running: int, target: int) -> float:
    """Keep a scale-up that is still starting: at least ``target`` while ``target > running``
    and there is load.

    The running replicas' numbers are not a judgement on a replica that has not started yet;
    once it runs, the next decisions see the real capacity (and Ray's ``downscale_delay_s``
    applies as usual). No load still gives ``desired`` (0), so an idle stage drains.
    """
    if load > 0 and target > running:
        return max(desired, float(target))
    return desired


def reported_total(
    aggregated: Mapping[str, Mapping[Any, float]] | None, metric: str, replicas: Iterable[Any]
) -> float | None:
    """Sum of a replica-reported metric over the running replicas; None if none reported it.

    Args:
        aggregated: ``AutoscalingContext.aggregated_metrics`` (metric -> replica -> value
            averaged over ``look_back_period_s``).
        metric: the metric name.
        replicas: the running replicas (a report from a stopped replica is not counted).
    """
    per_replica = (aggregated or {}).get(metric) or {}
    values = [per_replica[r] for r in replicas if r in per_replica]
    return float(sum(values)) if values else None


def encoder_load(requests: float, queued_texts: float | None) -> float:
    """Encoder work: the larger of the request count and the reported batch backlog.

    Each single-text ``encode`` call is one request and at most one queued text, so for them
    the request count is the larger; a bulk ``embed`` call is one request but many texts.
    """
    return max(requests, queued_texts or 0.0)


def generator_load(sequences: float | None, handle_queued: float, requests: float) -> float:
    """Generator work: engine sequences plus requests not yet on a replica.

    Falls back to Serve's request count (running + queued, handle-side) only when no replica
    reported its engine state.
    """
    if sequences is None:
        return requests
    return sequences + handle_queued


def generator_desired(
    sequences: float | None,
    waiting: float | None,
    handle_queued: float,
    requests: float,
    target_per_replica: float,
    current: int,
    tolerance: float,
) -> float:
    """Generator replicas: proportional to engine sequences, and +1 while work is waiting.

    Waiting work (sequences the engine cannot run yet, or requests queued at the handles for a
    free replica slot) means time to first token grows with every arrival, whatever the mean
    load says, so it asks for one replica more than now (Ray's ``upscale_delay_s`` still
    applies, so a momentary queue does not scale).
    """
    load = generator_load(sequences, handle_queued, requests)
    desired = desired_replicas(load, target_per_replica, current, tolerance)
    if (waiting or 0.0) + handle_queued >= 1.0:
        desired = max(desired, float(current + 1))
    return desired


# --------------------------------------------------------------------------- Serve policies
class _SignalPolicy:
    """Common part of the policies: Ray calls ``instance(ctx)`` every control-loop tick."""

    def __init__(self, tolerance: float = 0.1) -> None:
        if not 0 <= tolerance < 1:
            raise ValueError("tolerance must be in [0, 1)")
        self.tolerance = tolerance

    @staticmethod
    def _target(ctx: Any) -> float:
        return float(ctx.config.get_target_ongoing_requests())


class EncoderQueuePolicy(_SignalPolicy):
    """Encoder: scale on queued batch work (texts), at least the request count."""

    def __call__(self, ctx: Any) -> tuple[float, dict[str, Any]]:
        texts = reported_total(ctx.aggregated_metrics, ENCODER_QUEUED_TEXTS, ctx.running_replicas)
        load = encoder_load(float(ctx.total_num_requests), texts)
        desired = desired_replicas(load, self._target(ctx), ctx.current_num_replicas, self.tolerance)
        return hold_while_starting(desired, load, ctx.current_num_replicas, ctx.target_num_replicas), {}


class GeneratorPolicy(_SignalPolicy):
    """Generator: scale on the vLLM engines' sequences and on waiting work."""

    def __call__(self, ctx: Any) -> tuple[float, dict[str, Any]]:
        replicas = ctx.running_replicas
        sequences = reported_total(ctx.aggregated_metrics, GENERATOR_SEQUENCES, replicas)
        handle_queued = float(ctx.total_queued_requests or 0.0)
        requests = float(ctx.total_num_requests)
        desired = generator_desired(
            sequences=sequences,
            waiting=reported_total(ctx.aggregated_metrics, GENERATOR_WAITING, replicas),
            handle_queued=handle_queued,
            requests=requests,
            target_per_replica=self._target(ctx),
            current=ctx.current_num_replicas,
            tolerance=self.tolerance,
        )
        load = generator_load(sequences, handle_queued, requests)
        return hold_while_starting(desired, load, ctx.current_num_replicas, ctx.target_num_replicas), {}


# --------------------------------------------------------------------------- replica side
def batch_queue_length(batched: Any) -> int | None:
    """Texts waiting in a ``@serve.batch`` method's queue, or None if it cannot be read.

    Ray 2.60 has no public accessor: the batch wrapper carries bound debugging methods of its
    lazy queue wrapper, whose ``_queue`` holds an ``asyncio.Queue``. Every step is guarded, so
    a Ray that changes this reports nothing (the policy then uses the request count) instead of
    failing; the lazy queue is never created here (that would start a batching task).
    """
    owner = getattr(getattr(batched, "_get_curr_iteration_start_times", None), "__self__", None)
    if owner is None or not hasattr(owner, "_queue"):
        return None
    if owner._queue is None:
        return 0  # no call has reached the batcher yet
    qsize = getattr(getattr(owner._queue, "queue", None), "qsize", None)
    return int(qsize()) if callable(qsize) else None


def engine_stats(unfinished: int, max_num_seqs: int) -> dict[str, float]:
    """The generator's report from its engine's unfinished request count.

    The engine runs at most ``max_num_seqs`` sequences; the rest wait in its scheduler queue.
    (Sequences held back by a full KV cache also wait; they are not visible here.)
    """
    return {
        GENERATOR_SEQUENCES: float(unfinished),
        GENERATOR_WAITING: float(max(0, unfinished - max_num_seqs)),
    }
