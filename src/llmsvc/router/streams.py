"""The end of a relayed OpenAI stream: its ``[DONE]`` event, and draining what follows.

A stream whose ``data: [DONE]`` has gone to the client is complete; what the
upstream still sends after it (the chunked encoding's terminator) is read by
:func:`drain`, so that the upstream connection goes back to the pool even when
the client closed at once, instead of being dropped.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp

DONE = b"data: [DONE]"  # the last event of an OpenAI stream
DRAIN_S = 2.0  # how long the end of a delivered stream is awaited for its connection's reuse


class IdleTimeout(Exception):
    """The upstream stream sent nothing for ``--stream-idle-timeout`` seconds."""


async def next_chunk(content: aiohttp.StreamReader, idle: float | None) -> bytes:
    """The upstream's next chunk (b"" at its end); :class:`IdleTimeout` when nothing
    came for ``idle`` seconds (None: no limit)."""
    if idle is None:
        return await content.readany()
    timeout = asyncio.timeout(idle)
    try:
        async with timeout:
            return await content.readany()
    except TimeoutError:
        if timeout.expired():
            raise IdleTimeout from None
        raise


def ends_stream(tail: bytes) -> bool:
    """Whether the bytes relayed so far (their last few) end with the ``[DONE]`` event."""
    return tail.rstrip().endswith(DONE)


async def drain(upstream: aiohttp.ClientResponse) -> None:
    """Read what is left of ``upstream`` (for at most :data:`DRAIN_S`): a response read to
    its end gives its connection back to the pool, where ``close`` would drop it."""
    with contextlib.suppress(TimeoutError, aiohttp.ClientError, OSError):
        async with asyncio.timeout(DRAIN_S):
            while await upstream.content.readany():
                pass
