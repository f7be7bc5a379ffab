"""HTTP helpers shared by the evaluation runners: one POST with retries, errors that name the
route, and bounded concurrency.

The runners talk to ragserve only through its public HTTP API, like any client: a 503 or 504 is
the server saying a stage is overloaded or briefly unavailable, so it is retried after the
server's ``Retry-After``; any other failure stops the run with the server's own message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import httpx

#: Statuses worth retrying: an overloaded or briefly unavailable stage (the server says so).
RETRY_STATUSES = (503, 504)
#: Longest wait between two tries, whatever ``Retry-After`` asks for.
MAX_RETRY_WAIT_S = 10.0

T = TypeVar("T")
R = TypeVar("R")


class EvalError(RuntimeError):
    """The server refused or failed a request the evaluation needs."""


async def post(client: httpx.AsyncClient, route: str, body: dict[str, Any], retries: int) -> dict[str, Any]:
    """POST and return the JSON body; 503/504 are retried after ``Retry-After`` (at most 10 s).

    Raises:
        EvalError: any other non-2xx status, or a 503/504 on the last of ``retries + 1`` tries.
    """
    for attempt in range(retries + 1):
        r = await client.post(route, json=body)
        if r.status_code in RETRY_STATUSES and attempt < retries:
            await asyncio.sleep(retry_after(r))
            continue
        if not r.is_success:
            raise EvalError(f"POST {route} failed with {r.status_code}: {message(r)}")
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


async def gather_bounded(items: Iterable[T], fn: Callable[[T], Awaitable[R]], concurrency: int) -> list[R]:
    """``fn`` over ``items`` with at most ``concurrency`` calls in flight; results in item order."""
    sem = asyncio.Semaphore(concurrency)

    async def one(item: T) -> R:
        async with sem:
            return await fn(item)

    return list(await asyncio.gather(*(one(item) for item in items)))
