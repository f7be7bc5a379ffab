"""The OpenAPI document the ingress serves at ``/openapi.json``, committed as ``docs/openapi.json``
so that a change of the API shows in review (the stale check fails until it is re-rendered)."""

from __future__ import annotations

import json
from pathlib import Path

OUT = "docs/openapi.json"


def document() -> dict:
    """The document, built from the routers alone (no stage is called or needed)."""
    from deployments.config import AppConfig
    from deployments.ingress.api import build_api
    from deployments.ingress.pipeline import Pipeline

    handles = {name: None for name in ("preprocess", "encoder", "search", "generator")}
    return build_api(Pipeline(handles, AppConfig())).openapi()


def generate(root: Path) -> dict[str, str]:
    """``{docs/openapi.json: text}`` (the version field is left out: it changes on every release)."""
    doc = document()
    doc["info"].pop("version", None)
    return {OUT: json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"}
