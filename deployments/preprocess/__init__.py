"""Preprocess stage: query normalisation, tokenisation (English + Chinese), stopwords, stemming."""
