"""``ragserve bench``: load tests of retrieval, generation, both, and embeddings, with baselines."""
