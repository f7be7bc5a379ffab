"""Encoder stage: dense sentence embeddings from a transformer model, request-batched."""
