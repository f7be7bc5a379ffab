"""Search stage: Milvus dense + BM25 hybrid retrieval."""
