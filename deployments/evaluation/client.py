"""HTTP helpers of the evaluation runners: the shared client helpers (:mod:`deployments.client`)
and the check of the retrieval mode a server reports."""

from __future__ import annotations

from typing import Any

from deployments.client import ApiError, gather_bounded, message, post, retry_after

__all__ = ["EvalError", "gather_bounded", "message", "post", "retry_after", "served_mode"]

#: A request the evaluation needs was refused or failed (the shared client's error).
EvalError = ApiError


def served_mode(res: dict[str, Any], mode: str) -> str:
    """The retrieval mode a ``/v1/retrieve`` response says it searched with: the asked one, or
    lexical for a hybrid query in a language outside ``search.dense_languages``.

    Raises:
        EvalError: any other mode (the server ignored the request's).
    """
    served = res.get("mode")
    if served != mode and not (mode == "hybrid" and served == "lexical"):
        raise EvalError(f"asked for mode {mode!r}, the server searched with {served!r}")
    return str(served)
