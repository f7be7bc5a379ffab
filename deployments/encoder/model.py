"""The embedding model, usable in-process (ingestion, benchmarks) and inside the deployment.

sentence-transformers does the tokenisation, pooling and normalisation the model was trained
with; vectors are L2-normalised so Milvus's inner product is cosine similarity. The transformer's
forward pass runs on the configured backend (``encoder.backend``: PyTorch, ONNX Runtime or
OpenVINO, see :mod:`deployments.encoder.runtime`). Serving replicas, bulk ingestion's embedding
actors and ``--local`` ingestion all build this class from ``cfg.encoder``, so they run the same
backend.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from deployments import models
from deployments.config import EncoderConfig

log = logging.getLogger(__name__)


class Embedder:
    """A loaded sentence-embedding model.

    Args:
        cfg: the encoder's config slice (model reference, backend and precision, device, sequence
            length, threads).
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        import torch  # optional dependency: only the encoder needs it
        from sentence_transformers import SentenceTransformer

        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.cfg = cfg
        self.model = SentenceTransformer(models.resolve(cfg.model), device=cfg.device)
        self.model.max_seq_length = cfg.max_seq_length
        if cfg.backend != "torch":
            from deployments.encoder import runtime

            # Same thread count as torch would use (OMP_NUM_THREADS in a Ray worker): ONNX Runtime
            # and OpenVINO would otherwise take every core, next to the other stages' replicas.
            runtime.attach(self.model, cfg, threads=cfg.threads or torch.get_num_threads())
        self.dim = int(self.model.get_embedding_dimension())
        self.name = cfg.model

    def embed(self, texts: Sequence[str], batch_size: int | None = None) -> list[list[float]]:
        """Embed texts (one forward pass per ``batch_size``); returns unit-length vectors."""
        if not texts:
            return []
        vecs = self.model.encode(
            list(texts),
            batch_size=batch_size or len(texts),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return vecs.astype("float32").tolist()

    def input_tokens(self, texts: Sequence[str]) -> int:
        """Tokens the model reads for ``texts``: special tokens included, each cut at ``max_seq_length``."""
        ids = self.model.tokenizer(list(texts), add_special_tokens=True)["input_ids"]
        return sum(min(len(i), self.model.max_seq_length) for i in ids)

    def count_tokens(self, text: str) -> int:
        """Tokens the model's own tokenizer makes of ``text`` (for chunk sizing)."""
        return len(self.model.tokenizer(text, add_special_tokens=False)["input_ids"])
