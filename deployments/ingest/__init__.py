"""Ingestion: documents → chunks → embeddings → Milvus, with stable ids."""
