"""``ragserve eval``: retrieval quality (recall@k, MRR, nDCG@10) and a grounding check of answers,
measured over HTTP against a running ragserve on a labelled evaluation set."""
