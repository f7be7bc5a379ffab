"""Optional reranking stage (a cross-encoder)."""
