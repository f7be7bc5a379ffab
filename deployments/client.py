"""Client-side helpers for ragserve's HTTP API (the CLI's ``ask``, ``eval``, ``tune`` and ``ingest``, the
tests): server-sent events, one POST with retries, bounded concurrency.

A client talks to ragserve only through its public HTTP API: a 503 or 504 is the server saying a
stage is overloaded or briefly unavailable, so it is retried after the server's ``Retry-After``;
any other failure stops with the server's own message.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any, TypeVar

import httpx


def iter_sse(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    """``(event, data)`` pairs of a server-sent event stream, read line by line; a ``data:``
    line without a preceding ``event:`` line has event ``""``."""
    event = ""
    for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            yield event, line[6:]
            event = ""


async def aiter_sse(lines: AsyncIterable[str]) -> AsyncIterator[tuple[str, str]]:
    """:func:`iter_sse` over an async line stream (``httpx.Response.aiter_lines()``)."""
    event = ""
    async for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            yield event, line[6:]
            event = ""


#: Statuses worth retrying: an overloaded or briefly unavailable stage (the server says so).
RETRY_STATUSES = (503, 504)
#: Longest wait between two tries, whatever ``Retry-After`` asks for.
MAX_RETRY_WAIT_S = 10.0

T = TypeVar("T")
R = TypeVar("R")


class ApiError(RuntimeError):
    """The server refused or failed a request (after retries), with its own message."""


async def post(client: httpx.AsyncClient, route: str, body: dict[str, Any] | bytes, retries: int) -> dict[str, Any]:
    """POST ``body`` (a JSON value, or JSON already encoded) and return the JSON answer; 503/504 are
    retried after ``Retry-After`` (at most 10 s).

    Raises:
        ApiError: any other non-2xx status, or a 503/504 on the last of ``retries + 1`` tries.
    """
    encoded = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) \
        else {"json": body}
    for attempt in range(retries + 1):
        r = await client.post(route, **encoded)
        if r.status_code in RETRY_STATUSES and attempt < retries:
            await asyncio.sleep(retry_after(r))
            continue
        if not r.is_success:
            raise ApiError(f"POST {route} failed with {r.status_code}: {message(r)}")
        return r.json()
    raise AssertionError("unreachable")  # the last attempt returns or raises


def retry_after(r: httpx.Response) -> float:
    """The server's Retry-After in seconds (1 if absent or an HTTP date), at most 10."""
    try:
        return min(max(float(r.headers.get("retry-after", 1)), 0.0), MAX_RETRY_WAIT_S)
    except ValueError:
        return 1.0


def message(r: httpx.Response) -> str:
    """The message of ragserve's error shape, else the start of the body."""
    try:
        return r.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return r.text[:300]


async def gather_bounded(items: Iterable[T], fn: Callable[[T], Awaitable[R]], concurrency: int) -> list[R]:
    """``fn`` over ``items`` with at most ``concurrency`` calls in flight; results in item order."""
    sem = asyncio.Semaphore(concurrency)

    async def one(item: T) -> R:
        async with sem:
            return await fn(item)

    return list(await asyncio.gather(*(one(item) for item in items)))
