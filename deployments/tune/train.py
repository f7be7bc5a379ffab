"""Fine-tuning on Ray Train: one loop for the encoder (a bi-encoder) and the reranker (a cross-encoder).

Loss: ``MultipleNegativesRankingLoss`` of sentence-transformers (its bi-encoder and cross-encoder
forms): each question must score its own passage above every other passage of its batch and above
its hard negatives. Our pairs are positives only (no graded labels, no teacher), which is what this
loss is for, and it uses each batch ``batch_size`` times over; the mined hard negatives (the
current encoder's own mistakes) are the column that teaches near-duplicates apart. A batch never
holds two questions of one document: the other's passage would be a false in-batch negative.

The loop runs on ``TorchTrainer`` workers (CPU here, GPUs with ``use_gpu`` and the same code):
every ``checkpoint_every`` steps rank 0 saves the model, optimizer, scheduler and step, so a
killed worker (Ray Train restarts the group, up to ``max_failures`` times) or a re-run of the
same command resumes from the last checkpoint. Batches are a pure function of the seed, the
epoch and the rank, so a resumed run takes the same batches as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from deployments.tune import artefacts
from deployments.tune.artefacts import Kind
from deployments.tune.data import Pair, TrainingSet

log = logging.getLogger(__name__)
#: Seconds between two progress lines of a run (and one at every checkpoint).
PROGRESS_EVERY_S = 10.0


@dataclass(frozen=True)
class TrainParams:
    """What decides the trained weights (all of it goes into the artefact's version)."""

    epochs: int = 3
    batch_size: int = 16
    lr: float = 2e-5
    warmup: float = 0.1
    max_seq_length: int = 256
    hard_negatives: int = 1  # negatives per question in each step (columns of the loss)
    seed: int = 0
    workers: int = 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RunOptions:
    """How a run is carried out (none of it changes the weights)."""

    checkpoint_every: int = 10
    max_failures: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    threads: int | None = None  # torch threads per worker (None: the machine's cores / workers)


# --------------------------------------------------------------------------- batches
def batches(pairs: list[Pair], batch_size: int, seed: int, epoch: int, rank: int, world: int) -> list[list[Pair]]:
    """This rank's batches of one epoch: a seeded shuffle, no document twice in a batch, and the
    same number of batches on every rank (DDP steps together)."""
    order = list(pairs)
    random.Random(seed * 7919 + epoch).shuffle(order)
    out: list[list[Pair]] = []
    pending = order
    while pending:
        batch, seen, later = [], set(), []
        for p in pending:
            if len(batch) < batch_size and p.doc_id not in seen:
                batch.append(p)
                seen.add(p.doc_id)
            else:
                later.append(p)
        out.append(batch)
        pending = later
    per_rank = len(out) // world if world > 1 else len(out)
    return out[rank::world][:per_rank]


def plan(pairs: list[Pair], p: TrainParams, rank: int, world: int) -> list[list[Pair]]:
    """Every batch of the run, in order, for one rank."""
    return [b for epoch in range(p.epochs) for b in batches(pairs, p.batch_size, p.seed, epoch, rank, world)]


def columns(batch: list[Pair], texts: dict[str, str], negatives: int, rng: random.Random) -> list[list[str]]:
    """The loss's text columns: questions, positives, then ``negatives`` hard-negative columns (a
    pair with fewer mined negatives borrows a random passage of another document)."""
    cols = [[p.question for p in batch], [texts[p.positive] for p in batch]]
    ids = sorted(texts)
    for k in range(negatives):
        col = []
        for p in batch:
            if k < len(p.negatives):
                col.append(texts[p.negatives[k]])
            else:
                other = rng.choice(ids)
                while other == p.positive:
                    other = rng.choice(ids)
                col.append(texts[other])
        cols.append(col)
    return cols


# --------------------------------------------------------------------------- models
def load_model(kind: Kind, path: str, max_seq_length: int, device: str = "cpu") -> Any:
    """A sentence-transformers model to train: a SentenceTransformer, or a CrossEncoder with one
    output (its scoring head is new when ``path`` holds a bi-encoder)."""
    if kind == "encoder":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(path, device=device)
        model.max_seq_length = max_seq_length
        return model
    from sentence_transformers import CrossEncoder

    return CrossEncoder(path, num_labels=1, max_length=max_seq_length, device=device)


def make_loss(kind: Kind, model: Any) -> Any:
    if kind == "encoder":
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

        return MultipleNegativesRankingLoss(model)
    from sentence_transformers.cross_encoder.losses import MultipleNegativesRankingLoss as CrossMNRL

    return CrossMNRL(model)


def loss_of(kind: Kind, trainable: Any, model: Any, cols: list[list[str]]) -> Any:
    """The loss of one batch; ``trainable`` is the loss module (DDP-wrapped on several workers)."""
    if kind == "encoder":
        from sentence_transformers.util import batch_to_device

        return trainable([batch_to_device(model.tokenize(c), model.device) for c in cols], None)
    return trainable(cols, None)


# --------------------------------------------------------------------------- the loop
def lr_factor(total: int, warmup: float) -> Any:
    """The learning-rate multiplier per step: linear warm-up over ``warmup`` of the steps, then
    linear decay to 0 at the last step."""
    warm = max(1, math.ceil(warmup * total))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(1, total - warm))

    return factor


def _save(model: Any, optimizer: Any, scheduler: Any, step: int, directory: Path) -> None:
    import torch

    model.save(str(directory / "model"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step},
               directory / "state.pt")


def _progress(done: int, total: int, first: int, started: float, loss: float, examples: int) -> str:
    """A progress bar line (workers' output reaches the driver line by line, so no carriage returns)."""
    from tqdm import tqdm

    elapsed = time.perf_counter() - started
    rate = examples / elapsed if elapsed > 0 else 0.0
    remaining = elapsed / max(done - first, 1) * (total - done)
    bar = tqdm.format_meter(done, total, elapsed, prefix="tune", ncols=60)
    return f"{bar.split('[')[0].rstrip()} loss={loss:.4f} examples/s={rate:.1f} eta={remaining:.0f}s"


def _resume(checkpoint: Any, kind: Kind, max_seq_length: int, device: str) -> tuple[Any, dict[str, Any]]:
    """The model and training state of a checkpoint."""
    import torch

    with checkpoint.as_directory() as d:
        return (load_model(kind, str(Path(d) / "model"), max_seq_length, device),
                torch.load(Path(d) / "state.pt", map_location=device))


def train_loop(config: dict[str, Any]) -> None:
    """The body of every Ray Train worker (see the module docstring)."""
    import ray.train
    import ray.train.torch
    import torch
    from ray.train import Checkpoint

    kind: Kind = config["kind"]
    p = TrainParams(**config["params"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(config["threads"])
    torch.manual_seed(p.seed * 1000 + rank)
    data = TrainingSet.load(Path(config["data_dir"]))
    texts = {c.id: c.text for c in data.chunks}
    steps = plan(list(data.pairs), p, rank, world)
    device = str(ray.train.torch.get_device())  # a GPU of the worker's own with use_gpu, else the CPU
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        model, state = load_model(kind, config["base"], p.max_seq_length, device), None
    else:
        model, state = _resume(checkpoint, kind, p.max_seq_length, device)
    first = state["step"] if state else 0
    trainable = ray.train.torch.prepare_model(make_loss(kind, model)) if world > 1 else make_loss(kind, model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=p.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(len(steps), p.warmup))
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    started, losses, examples, shown = time.perf_counter(), [], 0, 0.0
    for step in range(first, len(steps)):
        batch = steps[step]
        # Borrowed negatives are drawn per step from the seed: a resumed run draws the same ones.
        cols = columns(batch, texts, p.hard_negatives, random.Random(p.seed * 1_000_003 + step))
        loss = loss_of(kind, trainable, model, cols)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        losses.append(float(loss.item()))
        examples += len(batch)
        done = step + 1
        checkpoint = done % config["checkpoint_every"] == 0 or done == len(steps)
        if rank == 0 and (checkpoint or time.perf_counter() - shown >= PROGRESS_EVERY_S):
            # Ray forwards a worker's log lines to the driver (a print would be forwarded twice).
            log.info(_progress(done, len(steps), first, started, sum(losses) / len(losses), examples))
            shown = time.perf_counter()
        if checkpoint:
            metrics = {"step": done, "steps": len(steps), "loss": sum(losses) / len(losses), "resumed_from": first,
                       "examples_per_s": examples / (time.perf_counter() - started)}
            if rank == 0:
                with tempfile.TemporaryDirectory() as tmp:
                    _save(model, optimizer, scheduler, done, Path(tmp))
                    ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
            else:
                ray.train.report(metrics)
            losses = []


# --------------------------------------------------------------------------- the driver
def fit(kind: Kind, base: str, data_dir: Path, params: TrainParams, run: RunOptions = RunOptions(),
        meta: dict[str, Any] | None = None) -> tuple[Path, dict[str, Any]]:
    """Train ``kind`` from the model reference ``base`` on a saved training set and publish the
    artefact; returns its path and the last reported metrics. An artefact of the same version is
    reused without training (``{"reused": True}``). Needs a connected (or startable) Ray."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from deployments import models

    base_path = Path(models.resolve(base))
    data = TrainingSet.load(data_dir)
    data.check()
    ver = artefacts.version(artefacts.digest_model(base_path), TrainingSet.digest(data_dir), params.as_dict())
    done = artefacts.root() / artefacts.name(kind, ver)
    if (done / artefacts.MANIFEST).exists():
        return done, {"reused": True}
    threads = run.threads or max(1, (os.cpu_count() or 1) // params.workers)
    config = {"kind": kind, "base": str(base_path), "data_dir": str(data_dir.resolve()), "params": params.as_dict(),
              "checkpoint_every": run.checkpoint_every, "threads": threads}
    trainer = TorchTrainer(
        train_loop, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=params.workers, use_gpu=run.use_gpu,
                                     resources_per_worker={"CPU": run.cpus_per_worker}),
        # The same run name for the same version: a re-run of a killed command resumes its checkpoints.
        run_config=RunConfig(name=artefacts.name(kind, ver), storage_path=str(artefacts.root() / "runs"),
                             failure_config=FailureConfig(max_failures=run.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)))
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training {kind} ended without a checkpoint: {result.error}")
    with result.checkpoint.as_directory() as d:
        path = artefacts.publish(Path(d) / "model", kind, ver, {
            "base": base, "base_digest": artefacts.digest_model(base_path), "data": data.meta,
            "data_digest": TrainingSet.digest(data_dir), "params": params.as_dict(),
            "train": dict(result.metrics or {}), **(meta or {})})
    log.info("trained %s: %s", kind, json.dumps(result.metrics))
    return path, dict(result.metrics or {})
