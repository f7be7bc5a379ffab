"""Which way ``ragserve ingest`` takes: posted through a running server, the bulk pipeline on that
server's Ray cluster, the pipeline on a Ray of its own, or all in this process.

Starting a second local Ray next to a running ``ragserve serve`` is what made a small ingest slow
(a Ray start, then embedding actors loading the model, on the cores the app serves from). So
when a ragserve server answers on the config's ``http_options``:

* a batch of at most ``ingest.api_max_documents`` documents is posted through its
  ``POST /v1/documents`` (the app's own replicas chunk, embed and write it; nothing starts);
* a larger batch joins the server's Ray cluster (the one behind that port,
  :func:`deployments.stack.ray_address_serving`) and runs the bulk pipeline in the CPUs the app's
  replicas leave free (:func:`deployments.ingest.bulk.fit`);
* with no room there, or no way to find that cluster, the API takes any batch;
* ``--address`` (a cluster), ``--local`` (this process) and ``--via api|cluster`` decide instead.

:func:`decide` is the whole decision, a pure function of what was found.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

from deployments.config import AppConfig, IngestConfig
from deployments.errors import ConfigError
from deployments.ingest import sources

log = logging.getLogger(__name__)

Kind = Literal["local", "start", "join", "api"]
Via = Literal["api", "cluster"]
#: How long a server has to answer ``/readyz`` (it asks every stage, each within 5 s).
PROBE_TIMEOUT_S = 10.0
#: A document goes through the API only when its file is at most this share of the server's body
#: limit: JSON escapes the text (a quote or newline doubles, a control character grows six-fold).
BODY_SHARE = 0.5


@dataclass(frozen=True)
class Batch:
    """What is about to be ingested: its documents (files, and the lines of ``.jsonl`` files) and
    the bytes of the largest one."""

    documents: int
    largest_bytes: int


@dataclass(frozen=True)
class Server:
    """A ragserve server answering on the config's address.

    Attributes:
        url: its base URL.
        ready: every stage answered ``/readyz``.
        writable: it is open, or this process has a key to send (``RAGSERVE_API_KEY``).
        ray_address: the GCS address of the Ray cluster serving it, when it runs on this machine.
        dim: the vector dimension of its encoder (from ``/readyz``).
        encoder: the tag of its live encoder (from ``/readyz``; ``protocol.types.encoder_tag``).
    """

    url: str
    ready: bool
    writable: bool
    ray_address: str | None = None
    dim: int | None = None
    encoder: str | None = None


@dataclass(frozen=True)
class Route:
    """The way taken: ``local`` (this process), ``start`` (the pipeline on a new local Ray),
    ``join`` (the pipeline on the cluster at ``address``) or ``api`` (``POST /v1/documents``)."""

    kind: Kind
    reason: str
    address: str | None = None


def estimate(refs: list[sources.FileRef], icfg: IngestConfig) -> Batch:
    """The documents of the listed files: one per file, one per non-blank line of a ``.jsonl`` file
    (read here, as the parser will); a file over ``ingest.max_file_bytes`` counts none (it is skipped)."""
    documents, largest = 0, 0
    for ref in refs:
        if ref.size > icfg.max_file_bytes:
            continue
        if PurePosixPath(ref.uri).suffix.lower() != ".jsonl":
            documents, largest = documents + 1, max(largest, ref.size)
            continue
        try:
            lines = [line for line in sources.read(ref).splitlines() if line.strip()]
        except OSError:
            lines = [b""]  # unreadable here: the parser reports it, as one skipped file
        documents += len(lines)
        largest = max([largest, *map(len, lines)])
    return Batch(documents, largest)


def api_refusal(server: Server | None, batch: Batch, max_body_bytes: int) -> str | None:
    """Why the batch cannot go through the server's API (None: it can)."""
    if server is None:
        return "no ragserve server answers on the config's http_options"
    if not server.ready:
        return f"the server at {server.url} is not ready (/readyz)"
    if not server.writable:
        return "the server has API keys and RAGSERVE_API_KEY is not set"
    if batch.largest_bytes > max_body_bytes * BODY_SHARE:
        return (f"a document of {batch.largest_bytes} bytes is too large for the server's request body "
                f"limit (ingress.max_body_bytes {max_body_bytes})")
    return None


def encoder_refusal(server: Server, cfg: AppConfig) -> str | None:
    """Why the pipeline may not run beside this server (None: it may): the server's live encoder is
    not the config's. The pipeline's actors embed with the config's encoder into that encoder's
    copy of the collection; the API writes with the server's own."""
    from deployments.protocol.types import encoder_tag

    mine = encoder_tag(cfg.encoder.model)
    if server.encoder is None or server.encoder == mine:
        return None
    return (f"the server's live encoder ({server.encoder or 'untuned'}) is not the config's "
            f"({mine or 'untuned'}, encoder.model)")


def decide(batch: Batch, server: Server | None, cfg: AppConfig, *, local: bool = False, address: str | None = None,
           via: Via | None = None, cluster_full: bool = False) -> Route:
    """The way to ingest ``batch``.

    Args:
        batch: what is about to be ingested (:func:`estimate`).
        server: the ragserve server found on the config's address, or None.
        cfg: the config (``ingest.api_max_documents``, ``ingress.max_body_bytes``).
        local: ``--local``.
        address: ``--address``.
        via: ``--via``.
        cluster_full: the server's cluster was joined and had no room for the pipeline.

    Raises:
        ConfigError: ``--via`` asks for a way that is not open, or the server's cluster is full and
            its API cannot take the batch.
    """
    if local:
        return Route("local", "--local: everything in this process")
    if address:
        return Route("join", f"--address {address}", address)
    refusal = api_refusal(server, batch, cfg.ingress.max_body_bytes)
    if via == "api":
        if refusal:
            raise ConfigError(f"--via api: {refusal}")
        return Route("api", f"--via api: POST /v1/documents of {server.url}")  # type: ignore[union-attr]
    if via == "cluster":
        return _cluster(server, cluster_full, "--via cluster", cfg)
    if server is None:
        return Route("start", f"{refusal}: the bulk pipeline on a local Ray of its own")
    other_encoder = encoder_refusal(server, cfg)
    if other_encoder:
        if refusal:
            raise ConfigError(f"{other_encoder}, and its API cannot take the batch: {refusal}")
        return Route("api", f"{other_encoder}: POST /v1/documents of {server.url}")
    limit = cfg.ingest.api_max_documents
    large = batch.documents > limit
    if server.ray_address and not cluster_full and (large or refusal):
        return _cluster(server, False, f"{batch.documents} documents > ingest.api_max_documents ({limit})"
                        if large else str(refusal))
    if refusal is None:
        why = ("no room for the pipeline on its Ray cluster" if cluster_full else
               f"{batch.documents} documents <= ingest.api_max_documents ({limit})" if not large else
               "its Ray cluster was not found on this machine")
        return Route("api", f"{why}: POST /v1/documents of {server.url}")
    if cluster_full:
        raise ConfigError(f"{refusal}, and the Ray cluster of {server.url} has no CPUs free beyond what its "
                          "replicas may claim: use --local, or --address a larger cluster")
    return Route("start", f"{refusal}, and its Ray cluster was not found on this machine: "
                 "the bulk pipeline on a local Ray of its own")


def _cluster(server: Server | None, full: bool, why: str, cfg: AppConfig | None = None) -> Route:
    """Join the server's cluster (ConfigError when there is none to join, it is full, or it serves
    another encoder than ``cfg``'s)."""
    if server is None:
        raise ConfigError(f"{why}: no ragserve server answers on the config's http_options")
    other_encoder = encoder_refusal(server, cfg) if cfg is not None else None
    if other_encoder:
        raise ConfigError(f"{why}: {other_encoder}")
    if not server.ray_address:
        raise ConfigError(f"{why}: the Ray cluster serving {server.url} was not found on this machine")
    if full:
        raise ConfigError(f"{why}: the Ray cluster of {server.url} has no CPUs free beyond what its replicas may claim")
    return Route("join", f"{why}: the bulk pipeline on the Ray cluster at {server.ray_address} serving {server.url}",
                 server.ray_address)


def probe(host: str, port: int, writable: bool) -> Server | None:
    """The ragserve server on ``host:port`` (a wildcard host is probed on loopback), if one answers
    ``/readyz`` with ragserve's readiness report, ready (200) or not (503); else None."""
    import httpx

    from deployments.protocol.api import Readiness
    from deployments.stack import ray_address_serving

    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"
    try:
        report = Readiness.model_validate(httpx.get(f"{url}/readyz", timeout=PROBE_TIMEOUT_S).json())
    except (httpx.HTTPError, ValueError):  # nothing there, or not ragserve (pydantic's errors are ValueErrors)
        return None
    encoder = report.stages.get("encoder")
    dim = (encoder.model_extra or {}).get("dim") if encoder is not None else None
    live = (encoder.model_extra or {}).get("encoder") if encoder is not None else None
    return Server(url, report.ready, writable, ray_address_serving(port), int(dim) if dim else None,
                  None if live is None else str(live))
