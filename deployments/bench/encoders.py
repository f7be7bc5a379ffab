"""``ragserve bench --mode encoder-backends``: every encoder backend against PyTorch, in one run.

Three measurements, each a comparison inside one process and one run:

* **throughput in-process** (always): texts/s of each (backend, precision) on the same texts,
  at concurrency 1 (one question per forward pass, as a lone query reaches the encoder) and
  32 (32 questions per forward pass: what ``@serve.batch`` forms from 32 concurrent callers),
  and for ingestion (passages, 32 per pass). Backends take turns in every round, in a rotated
  order, so a noisy neighbour on the machine hits them alike; the table shows each one's median
  over the rounds. Also each backend's agreement with torch (cosine of the vectors, worst and
  mean over the questions and passages).
* **through Serve** (``--serve``): each backend deployed as its own encoder app on the running
  Ray cluster, driven through a DeploymentHandle at concurrency 1 and 32 (batched as served).
* **retrieval quality** (``--eval``): nDCG@10 of ``ragserve eval``'s runner (dense and hybrid
  modes) on a local stack started per backend, each into its own fresh collection.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Sequence
from importlib import resources
from typing import Any

from deployments.config import ENCODER_PRECISIONS, AppConfig, EncoderConfig

#: Every (backend, precision) pair, torch first (the reference of every ratio).
VARIANTS: tuple[str, ...] = tuple(f"{b}/{p}" for b, ps in ENCODER_PRECISIONS.items() for p in ps)
#: Largest nDCG@10 a backend may lose against torch before it is marked as failing.
NDCG_TOLERANCE = 0.005


def parse_variants(spec: str) -> list[str]:
    """``"onnx/int8,openvino"`` -> ``["torch/fp32", "onnx/int8", "openvino/fp32", ...]``: torch/fp32
    always first; a bare backend name means all of its precisions."""
    out = ["torch/fp32"]
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        names = [v for v in VARIANTS if v == item or v.split("/")[0] == item]
        if not names:
            raise ValueError(f"unknown encoder backend {item!r}; choose from {', '.join(VARIANTS)}")
        out += [n for n in names if n not in out]
    return out


def encoder_cfg(base: EncoderConfig, variant: str) -> EncoderConfig:
    """``base`` with the backend and precision of ``variant`` (``backend/precision``)."""
    backend, precision = variant.split("/")
    return base.model_copy(update={"backend": backend, "precision": precision})


def passages(n: int) -> list[str]:
    """The first ``n`` English passages of the bundled evaluation set (ingestion-sized texts)."""
    f = resources.files("deployments") / "data" / "eval" / "passages.en.jsonl"
    return [json.loads(line)["text"] for line in f.read_text(encoding="utf-8").splitlines()[:n]]


# --------------------------------------------------------------------------- in-process
def _cycle(texts: Sequence[str], n: int) -> list[str]:
    """``n`` texts, repeating ``texts`` as often as needed."""
    return [texts[i % len(texts)] for i in range(n)]


def _rate(fn: Any, texts: Sequence[str], batch: int) -> float:
    """texts/s of ``fn`` over ``texts`` in forward passes of ``batch`` texts."""
    start = time.perf_counter()
    for i in range(0, len(texts), batch):
        fn(texts[i:i + batch])
    return len(texts) / (time.perf_counter() - start)


def inprocess(cfg: AppConfig, variants: Sequence[str], questions: Sequence[str], docs: Sequence[str],
              rounds: int) -> dict[str, dict[str, float]]:
    """Per variant: median texts/s at c=1, c=32 and for passages (batch 32), load seconds, and
    cosine agreement with the first variant (torch)."""
    from deployments.encoder.model import Embedder

    embedders, load_s = {}, {}
    for v in variants:
        t = time.perf_counter()
        embedders[v] = Embedder(encoder_cfg(cfg.encoder, v))
        load_s[v] = time.perf_counter() - t
        embedders[v].embed(questions[:32])  # first passes allocate
    steps = {"c1": (_cycle(questions, 48), 1), "c32": (_cycle(questions, 256), 32),
             "passages_b32": (list(docs), 32)}
    rates: dict[str, dict[str, list[float]]] = {v: {s: [] for s in steps} for v in variants}
    for r in range(rounds):
        for v in variants[r % len(variants):] + variants[:r % len(variants)]:
            for step, (texts, batch) in steps.items():
                rates[v][step].append(_rate(embedders[v].embed, texts, batch))
        print(f"round {r + 1}/{rounds} done", flush=True)
    probe = [*questions, *docs]
    ref = embedders[variants[0]].embed(probe)
    out = {}
    for v in variants:
        got = embedders[v].embed(probe)
        cos = [sum(a * b for a, b in zip(x, y, strict=True)) for x, y in zip(got, ref, strict=True)]
        out[v] = {f"{s}_texts_per_s": statistics.median(xs) for s, xs in rates[v].items()} | {
            "load_s": load_s[v], "cosine_min": min(cos), "cosine_mean": statistics.fmean(cos)}
    return out


# --------------------------------------------------------------------------- through Serve
def through_serve(cfg: AppConfig, variants: Sequence[str], questions: Sequence[str], n: int) -> dict[str, dict]:
    """texts/s at c=1 and c=32 of each variant deployed as a one-replica encoder app on the running
    Ray cluster (``ray.init("auto")``), each deleted after its measurement."""
    import ray
    from ray import serve

    from deployments.bench.baselines import _drive
    from deployments.encoder.deployment import Encoder

    ray.init(address="auto", logging_level="ERROR")
    out: dict[str, dict] = {}
    try:
        for v in variants:
            app = "bench-encoder-" + v.replace("/", "-")
            deployment = Encoder.options(num_replicas=1, max_ongoing_requests=64, ray_actor_options={"num_cpus": 0})
            serve.run(deployment.bind(encoder_cfg(cfg.encoder, v)), name=app, route_prefix=None)
            handle = serve.get_deployment_handle("encoder", app_name=app)
            try:
                out[v] = {f"c{c}_texts_per_s": asyncio.run(_drive(handle, questions, c, n if c > 1 else n // 4))
                          for c in (1, 32)}
            finally:
                serve.delete(app)
            print(f"serve {v}: {out[v]}", flush=True)
    finally:
        ray.shutdown()
    return out


# --------------------------------------------------------------------------- retrieval quality
def quality(cfg: AppConfig, variants: Sequence[str]) -> dict[str, dict[str, Any]]:
    """nDCG@10 (dense, hybrid; overall and per language) of ``ragserve eval``'s runner on a local
    stack per variant, each in a fresh collection ``eval_<backend>_<precision>``.

    A variant's loss against torch is its largest drop over the scores the encoder takes part in:
    dense, and hybrid in each language of ``search.dense_languages``. A hybrid question in another
    language is searched lexically only, and its score moved between fresh collections with the
    same texts (Chinese on the bundled set: 0.0097 between two runs of torch itself, up to 0.04
    between backends; milvus-lite's BM25 ranking), which would be charged to the encoder otherwise.
    """
    import httpx

    from deployments.evaluation import dataset, runner
    from deployments.stack import LocalStack

    evalset = dataset.load(None, conversations=False)
    out: dict[str, dict[str, Any]] = {}
    for v in variants:
        collection = "eval_" + v.replace("/", "_")
        stack_cfg = cfg.model_copy(update={"encoder": encoder_cfg(cfg.encoder, v)})
        with LocalStack(stack_cfg) as st:
            httpx.delete(f"{st.url}/v1/collections/{collection}", timeout=60)  # vectors of an earlier run
            opts = runner.EvalOptions(collection=collection, modes=("dense", "hybrid"), generate=0, condense=())
            report = runner.run_sync(st.url, evalset, opts)
        out[v] = {f"{m}_ndcg@10": report["modes"][m]["overall"]["ndcg@10"] for m in opts.modes}
        out[v] |= {f"{m}_ndcg@10_{lang}": a["ndcg@10"] for m in opts.modes
                   for lang, a in report["modes"][m]["by_lang"].items()}
        print(f"eval {v}: {out[v]}", flush=True)
    judged = ["dense_ndcg@10", *(f"hybrid_ndcg@10_{lang}" for lang in cfg.search.dense_languages
                                 if f"hybrid_ndcg@10_{lang}" in out[variants[0]])]
    ref = out[variants[0]]
    for v in variants:
        out[v]["judged_on"] = judged
        out[v]["worst_loss_vs_torch"] = max(ref[k] - out[v][k] for k in judged)
        out[v]["within_tolerance"] = out[v]["worst_loss_vs_torch"] <= NDCG_TOLERANCE
    return out


# --------------------------------------------------------------------------- table
def format_table(results: dict[str, Any]) -> str:
    """One row per variant: in-process texts/s and the ratio to torch, agreement, and the Serve
    and nDCG columns when they ran."""
    inp, srv, q = results["inprocess"], results.get("serve") or {}, results.get("quality") or {}
    ref = next(iter(inp.values()))
    head = f"{'backend':15} {'c=1 t/s':>9} {'x':>5} {'c=32 t/s':>9} {'x':>5} {'pass t/s':>9} {'x':>5} " \
           f"{'cos min':>8} {'cos mean':>8}"
    head += f" {'serve c=1':>10} {'serve c=32':>10}" if srv else ""
    head += f" {'nDCG dense':>10} {'nDCG hybr':>10} {'loss':>7}" if q else ""
    lines = [head]
    for v, r in inp.items():
        cells = []
        for k in ("c1", "c32", "passages_b32"):
            rate = r[f"{k}_texts_per_s"]
            cells += [f"{rate:9.1f}", f"{rate / ref[f'{k}_texts_per_s']:5.2f}"]
        line = f"{v:15} " + " ".join(cells) + f" {r['cosine_min']:8.4f} {r['cosine_mean']:8.4f}"
        if srv:
            s = srv.get(v)
            line += f" {s['c1_texts_per_s']:10.1f} {s['c32_texts_per_s']:10.1f}" if s else " " * 22
        if q and v in q:
            mark = "" if q[v]["within_tolerance"] else " !"
            line += (f" {q[v]['dense_ndcg@10']:10.4f} {q[v]['hybrid_ndcg@10']:10.4f}"
                     f" {q[v]['worst_loss_vs_torch']:7.4f}{mark}")
        lines.append(line)
    lines.append("x: texts/s over torch/fp32's in the same round; c=32: 32 texts per forward pass; pass: eval "
                 "passages, 32 per pass")
    if q:
        judged = ", ".join(next(iter(q.values()))["judged_on"])
        lines.append(f"loss: largest nDCG@10 drop against torch over {judged} (! over {NDCG_TOLERANCE})")
    return "\n".join(lines)
