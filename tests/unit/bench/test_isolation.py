"""The isolation benchmark's bookkeeping, against an in-process fake of the limited server."""

from __future__ import annotations

import asyncio

import httpx

from deployments.bench import isolation


def test_phases_and_the_noisy_keys_statuses_are_counted() -> None:
    seen = {"victim": 0}

    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.001)
        if request.headers["authorization"] == "Bearer noisy":
            return httpx.Response(429, headers={"retry-after": "1"}, json={"error": {"code": 429}})
        seen["victim"] += 1
        return httpx.Response(200, json={"sources": []})

    report = asyncio.run(isolation.run("http://test", "victim", "noisy", 5, 3, rate=200.0,
                                      transport=httpx.MockTransport(handler), rounds=2))
    assert seen["victim"] == 3 + 5 * 5  # warm-up, quiet, then two rounds of noisy + quiet
    v = report["victim"]
    assert [p["kind"] for p in v["phases"]] == ["quiet", "noisy", "quiet", "noisy", "quiet"]
    assert (v["quiet"]["n"], v["noisy"]["n"]) == (15, 10)
    assert v["p50_ratio_noisy_over_quiet"] > 0
    assert report["noisy_key"]["429"] > 0 and "429 without Retry-After" not in report["noisy_key"]


def test_the_flood_keeps_its_rate_open_loop() -> None:
    # The server answers the noisy key slowly: an open loop keeps sending at its rate (up to its
    # connections in flight) instead of waiting for each answer.
    async def handler(request: httpx.Request) -> httpx.Response:
        if request.headers["authorization"] == "Bearer noisy":
            await asyncio.sleep(0.2)
            return httpx.Response(429, headers={"retry-after": "1"}, json={"error": {"code": 429}})
        await asyncio.sleep(0.01)
        return httpx.Response(200, json={"sources": []})

    report = asyncio.run(isolation.run("http://test", "victim", "noisy", 20, 64, rate=100.0,
                                       transport=httpx.MockTransport(handler)))
    noisy = report["noisy_key"]
    # ~1.2 s of flood at 100/s while each answer took 0.2 s: a closed loop would have sent at
    # most 64 connections' worth per 0.2 s, one connection ~6 in all.
    assert noisy["429"] >= 60 and noisy["sent_per_s"] > 50


def test_without_a_transport_the_flood_runs_in_its_own_process() -> None:
    # A real loopback server: the flood's process sends to it, the victim asks from this one.
    import json
    import os
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            self.rfile.read(int(self.headers["content-length"]))
            noisy = self.headers["authorization"] == "Bearer noisy"
            body = json.dumps({"error": {"code": 429}} if noisy else {"sources": []}).encode()
            self.send_response(429 if noisy else 200)
            if noisy:
                self.send_header("retry-after", "1")
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        async def alone() -> tuple[int | None, dict[str, object]]:
            noisy = isolation.Flood(url, "noisy", 4, 50.0)
            await noisy.started()
            await asyncio.sleep(0.5)
            return noisy.pid, await noisy.stop()

        pid, got = asyncio.run(alone())
        report = asyncio.run(isolation.run(url, "victim", "noisy", 5, 4, rate=50.0))
    finally:
        server.shutdown()
    assert pid is not None and pid != os.getpid()
    assert got["429"] and "429 without Retry-After" not in got and got["sent_per_s"]
    assert report["noisy_key"]["429"] > 0 and report["victim"]["noisy"]["n"] == 5
