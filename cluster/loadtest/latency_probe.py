"""Sequential latency probe of a running ragserve (concurrency 1), loopback only.

Usage: python cluster/loadtest/latency_probe.py [--url http://127.0.0.1:8000] [-n 30]
Prints p50/p90 of /v1/retrieve and of a short non-streaming /v1/query, and the time to the
first streamed token of /v1/query (first ``delta`` event, measured at the client).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from importlib import resources

import httpx


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("-n", type=int, default=30, help="requests per measurement")
    ap.add_argument("--max-tokens", type=int, default=32, help="answer length of /v1/query")
    args = ap.parse_args()
    qfile = resources.files("deployments") / "data" / "sample_questions.json"
    questions = [q["question"] for q in json.loads(qfile.read_text(encoding="utf-8"))]
    c = httpx.Client(base_url=args.url, timeout=120)
    c.post("/v1/query", json={"question": questions[0], "max_tokens": 4}).raise_for_status()  # warm

    def timed(route: str, body: dict) -> float:
        t = time.perf_counter()
        c.post(route, json=body).raise_for_status()
        return time.perf_counter() - t

    retrieve = [timed("/v1/retrieve", {"question": questions[i % len(questions)]}) for i in range(args.n)]
    query = [timed("/v1/query", {"question": questions[i % len(questions)], "max_tokens": args.max_tokens})
             for i in range(args.n)]
    ttft = []
    for i in range(args.n):
        t = time.perf_counter()
        body = {"question": questions[i % len(questions)], "max_tokens": args.max_tokens, "stream": True}
        with c.stream("POST", "/v1/query", json=body) as r:
            for line in r.iter_lines():
                if line.startswith("data: ") and '"delta"' in line:
                    ttft.append(time.perf_counter() - t)
                    break
    for name, xs in (("/v1/retrieve", retrieve), (f"/v1/query max_tokens={args.max_tokens}", query),
                     ("/v1/query stream TTFT", ttft)):
        print(f"{name:32s} n={len(xs):3d} p50={pct(xs, 50) * 1000:8.1f} ms  p90={pct(xs, 90) * 1000:8.1f} ms"
              f"  mean={statistics.fmean(xs) * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
