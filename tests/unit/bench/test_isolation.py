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
                                      transport=httpx.MockTransport(handler)))
    assert seen["victim"] == 3 + 5 * 3  # warm-up and three phases
    v = report["victim"]
    assert [v[p]["n"] for p in ("before", "during", "after")] == [5, 5, 5]
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
