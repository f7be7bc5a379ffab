"""Client-side helpers for ragserve's HTTP API (the CLI's ``ask``, the tests)."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator


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
