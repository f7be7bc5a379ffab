"""Per-process set-up of Ray workers (``runtime_env.worker_process_setup_hook``).

Why: Serve writes each replica's log lines (with the request id) through handlers it installs
when the replica starts. pymilvus calls ``logging.config.dictConfig`` when first imported, which
closes every existing handler; imported later (by the search replica, at its first request) it
silently cut that replica's logs off. Importing it here, when the worker process starts and
before Serve installs its handlers, makes the call harmless. (vLLM does the same unless
``VLLM_CONFIGURE_LOGGING=0``, which the runtime environment sets: see deployments/stack.py.)
"""

from __future__ import annotations


def worker_setup() -> None:
    """Import the libraries that reconfigure logging on import, before Serve configures it."""
    import pymilvus  # noqa: F401
