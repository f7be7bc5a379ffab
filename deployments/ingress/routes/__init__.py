"""The ingress's routers, one module per API surface (each ``router(pipeline) -> APIRouter``).

=================  =============================================================
``rag``            /v1/retrieve, /v1/query, /v1/generate (ragserve's own API)
``chat``           /v1/chat/completions (OpenAI, with retrieval)
``completions``    /v1/completions (OpenAI, the model alone)
``embeddings``     /v1/embeddings, /v1/models (OpenAI)
``documents``      /v1/documents, /v1/collections (writes)
``health``         /healthz, /readyz
=================  =============================================================
"""

from deployments.ingress.routes import chat, completions, documents, embeddings, health, rag

ROUTERS = (rag, chat, completions, embeddings, documents, health)
