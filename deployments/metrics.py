"""Every ragserve metric, defined once.

Metrics are Ray metrics (``ray.serve.metrics``): Ray exports them in Prometheus format on each
node's metrics port, prefixed ``ray_``, and adds the ``deployment``/``replica``/``application``
tags for free. (A ``prometheus_client`` metric inside a replica would not be exported.)

:data:`SPECS` is the single list of names, kinds, help texts, buckets and label keys; it is also
what the monitoring generators (dashboards, rules) read, so a panel cannot name a metric that
does not exist. Labels are bounded: stage, route, status code, error type — never query text
or ids. Names follow ``rag_<subsystem>_<quantity>_<unit>`` with base units.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

# Latency buckets from 1 ms to 2 min: stages span sub-ms preprocess to long generations; finer
# where retrieval stages live (5-100 ms), since quantiles are interpolated inside a bucket.
LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1,
                   2.5, 5, 10, 30, 60, 120]
TOKEN_BUCKETS = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
SIZE_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128]


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: Literal["counter", "histogram", "gauge"]
    help: str
    tags: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


SPECS: tuple[MetricSpec, ...] = (
    # every stage
    MetricSpec("rag_stage_latency_seconds", "histogram", "Service time of one stage call.",
               ("stage",), tuple(LATENCY_BUCKETS)),
    MetricSpec("rag_stage_queue_seconds", "histogram", "Time a call waited inside a stage before service "
               "(encoder: waiting for its batch).", ("stage",), tuple(LATENCY_BUCKETS)),
    MetricSpec("rag_stage_requests_total", "counter", "Stage calls.", ("stage",)),
    MetricSpec("rag_stage_errors_total", "counter", "Stage calls that failed, by error type.",
               ("stage", "error_type")),
    # encoder
    MetricSpec("rag_encoder_batch_size", "histogram", "Texts per encoder forward pass.", (), tuple(SIZE_BUCKETS)),
    # search
    MetricSpec("rag_search_hits", "histogram", "Hits returned per search.", ("mode",), tuple(SIZE_BUCKETS)),
    MetricSpec("rag_search_milvus_seconds", "histogram", "Time of one Milvus call.", ("op",),
               tuple(LATENCY_BUCKETS)),
    # retrieval cache (in the ingress)
    MetricSpec("rag_retrieval_cache_lookups_total", "counter", "Retrieval cache lookups by result: hit, miss (none "
               "or an older version), bypass (no version token, or the request said Cache-Control: no-cache).",
               ("result",)),
    MetricSpec("rag_retrieval_cache_entries", "gauge", "Retrievals held by this ingress replica's cache."),
    MetricSpec("rag_retrieval_cache_bytes", "gauge", "Estimated bytes held by this ingress replica's cache."),
    # generator
    MetricSpec("rag_generator_ttft_seconds", "histogram", "Time to first token.", (), tuple(LATENCY_BUCKETS)),
    MetricSpec("rag_generator_tpot_seconds", "histogram", "Mean time per output token after the first.",
               (), tuple(LATENCY_BUCKETS)),
    MetricSpec("rag_generator_prompt_tokens", "histogram", "Prompt tokens per generation.", (),
               tuple(TOKEN_BUCKETS)),
    MetricSpec("rag_generator_output_tokens", "histogram", "Output tokens per generation.", (),
               tuple(TOKEN_BUCKETS)),
    MetricSpec("rag_generator_running_requests", "gauge", "Generations in flight in this replica."),
    # ingress
    MetricSpec("rag_ingress_latency_seconds", "histogram", "End-to-end HTTP request time (to last byte).",
               ("route", "code"), tuple(LATENCY_BUCKETS)),
    MetricSpec("rag_ingress_requests_total", "counter", "HTTP requests by route and status code.",
               ("route", "code")),
    # tenants (label values come from the keys file, never from a request; "open" without keys)
    MetricSpec("rag_tenant_requests_total", "counter", "HTTP requests of a tenant's keys by route and status code.",
               ("tenant", "route", "code")),
    MetricSpec("rag_tenant_generated_tokens_total", "counter", "Tokens generated for a tenant's keys.", ("tenant",)),
    MetricSpec("rag_tenant_rejections_total", "counter", "Requests refused before any work, by error type "
               "(authentication_error, permission_error, rate_limit_error).", ("tenant", "reason")),
    # Serve's HTTP proxy (deployments/ingress/gate.py)
    MetricSpec("rag_proxy_shed_total", "counter", "Retrievals the proxy refused (503) past the retrieval budget, "
               "by path.", ("path",)),
)
_BY_NAME = {s.name: s for s in SPECS}
_live: dict[str, Any] = {}


def get(name: str) -> Any:
    """The live Ray metric object for ``name``, created once per process on first use."""
    if name not in _live:
        from ray.serve import metrics as m

        s = _BY_NAME[name]
        if s.kind == "histogram":
            _live[name] = m.Histogram(s.name, description=s.help, boundaries=list(s.buckets), tag_keys=s.tags)
        elif s.kind == "counter":
            _live[name] = m.Counter(s.name, description=s.help, tag_keys=s.tags)
        else:
            _live[name] = m.Gauge(s.name, description=s.help, tag_keys=s.tags)
    return _live[name]


def observe(name: str, value: float, **tags: str) -> None:
    get(name).observe(value, tags=tags or None)


def inc(name: str, value: float = 1.0, **tags: str) -> None:
    get(name).inc(value, tags=tags or None)


def set_gauge(name: str, value: float, **tags: str) -> None:
    get(name).set(value, tags=tags or None)


@contextmanager
def stage_call(stage: str) -> Iterator[None]:
    """Count one stage call and record its latency; failures counted by error class."""
    inc("rag_stage_requests_total", stage=stage)
    start = time.perf_counter()
    try:
        yield
    except BaseException as e:
        inc("rag_stage_errors_total", stage=stage, error_type=getattr(e, "type", type(e).__name__))
        raise
    finally:
        observe("rag_stage_latency_seconds", time.perf_counter() - start, stage=stage)
