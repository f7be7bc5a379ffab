"""The encoder deployment: concurrent single-text calls merged into batched forward passes."""

from __future__ import annotations

import asyncio
import time

from ray import serve

from deployments import metrics
from deployments.config import EncoderConfig
from deployments.protocol.stages import Embeddings, QueryVector


@serve.deployment(name="encoder")
class Encoder:
    """Embeds texts with request batching (``@serve.batch``).

    Callers send one text per call; Serve gathers the calls that arrive within
    ``batch_wait_timeout_s`` (up to ``max_batch_size``) into one forward pass, which is what
    makes a transformer on a CPU or GPU efficient under concurrency.
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        from deployments.encoder.model import Embedder
        from deployments.protocol.types import encoder_tag

        self.cfg = cfg
        self.embedder = Embedder(cfg)
        self.dim = self.embedder.dim
        self.tag = encoder_tag(cfg.model)  # which copy of a collection this encoder's vectors belong to
        self._batched.set_max_batch_size(cfg.max_batch_size)
        self._batched.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)
        self.embedder.embed(["warm up"])  # first pass allocates; keep it off a request

    async def encode(self, text: str) -> QueryVector:
        """Embed one question: its unit-length vector, and which encoder made it."""
        vec = await self._one(text)
        return QueryVector.model_construct(values=tuple(vec), model=self.cfg.model, encoder=self.tag)

    async def _one(self, text: str) -> list[float]:
        with metrics.stage_call("encoder"):
            enqueued = time.perf_counter()
            vec, started = await self._batched(text)
            metrics.observe("rag_stage_queue_seconds", started - enqueued, stage="encoder")
            return vec

    async def embed(self, texts: list[str]) -> Embeddings:
        """Embed several texts (they join the same batches as concurrent single calls), with the
        tokens the model read (for usage accounting)."""
        vectors = await asyncio.gather(*(self._one(t) for t in texts))
        return Embeddings(vectors=tuple(tuple(v) for v in vectors), tokens=self.embedder.input_tokens(texts),
                          encoder=self.tag)

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """This replica's autoscaling signal (Ray Serve calls it while autoscaling is on).

        Texts waiting in the batch queue: the work the ``queue`` policy scales on. A bulk
        ``embed`` call is one request to Serve but one queued text per input.
        """
        from deployments.autoscaling import ENCODER_QUEUED_TEXTS, batch_queue_length

        queued = batch_queue_length(self._batched)
        return {} if queued is None else {ENCODER_QUEUED_TEXTS: float(queued)}

    async def chunk(self, text: str, max_tokens: int, overlap_tokens: int) -> list[str]:
        """Cut a document into chunks measured with this model's own tokenizer."""
        from deployments.ingest.chunking import chunk_text

        # Not a stage_call: the stage latency metrics are the query path's (their alerts assume it).
        return [c.text for c in chunk_text(text, max_tokens, overlap_tokens, self.embedder.count_tokens)]

    async def info(self) -> dict[str, int | str]:
        """Model name, vector dimension and tag (for /v1/embeddings and the search schema), and the
        backend/precision running it (for operators and the rolling-update test)."""
        return {"model": self.embedder.name, "dim": self.dim, "encoder": self.tag,
                "backend": f"{self.cfg.backend}/{self.cfg.precision}"}

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.001)  # both reset from the config in __init__
    async def _batched(self, texts: list[str]) -> list[tuple[list[float], float]]:
        """Vectors of one batch, each with the time the batch started (for queue time)."""
        started = time.perf_counter()
        metrics.observe("rag_encoder_batch_size", len(texts))
        # The forward pass runs ON the event loop, on purpose. Run in a worker thread, it held the
        # GIL (small-batch inference is mostly Python) while the loop thread starved, so requests
        # could not join the queue and batches stayed at 1-2 texts under 32 concurrent callers
        # (measured). Blocking here, the arrivals pile up meanwhile and form the next full batch.
        vecs = self.embedder.embed(texts)
        return [(v, started) for v in vecs]
