"""The end of a relayed OpenAI stream: its ``[DONE]`` event, and draining what follows.

A stream whose ``data: [DONE]`` has gone to the client is complete; what the
upstream still sends after it (the chunked encoding's terminator) is read by
:func:`drain`, so that the upstream connection goes back to the pool even when
the client closed at once, instead of being dropped.

``--stream-idle-timeout`` is kept by one :class:`IdleWatch` per stream, one timer
for the whole stream, not an ``asyncio.timeout`` around each read: entering and
leaving one costs about 7 us, a third of the router's CPU per relayed chunk.

The chunks themselves go to the client from the upstream connection's data callback
(:class:`Tap`), not through a read, a task wake-up and a write per chunk, whenever the
client's connection takes them at once; the relaying task handles the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from types import TracebackType

import aiohttp
from aiohttp import web

DONE = b"data: [DONE]"  # the last event of an OpenAI stream
DRAIN_S = 2.0  # how long the end of a delivered stream is awaited for its connection's reuse


class IdleTimeout(Exception):
    """The upstream stream sent nothing for ``--stream-idle-timeout`` seconds."""


CLOCK_SLACK_S = 0.001
"""A timer may fire up to this much before its time (the event loop rounds its timers
to the millisecond): a read this close to its limit has reached it."""


class IdleWatch:
    """The upstream's chunks with ``--stream-idle-timeout``: each read may wait ``idle``
    seconds (None: no limit), then raises :class:`IdleTimeout`.

    One timer for the whole stream: each read only notes when it began
    (``loop.time()``, a cached value). When the timer fires it ends a read that has
    waited ``idle`` seconds (``StreamReader.set_exception``: the pending ``readany``
    raises it), or is set again for the end of the current read's limit, or, between
    reads (the client is slow to take what was relayed: that is not the upstream's
    silence), ``idle`` seconds on, which is never later than the next read's limit.
    """

    __slots__ = ("_content", "_handle", "_idle", "_loop", "_since")

    def __init__(self, content: aiohttp.StreamReader, idle: float | None) -> None:
        self._content = content
        self._idle = idle
        self._since: float | None = None  # when the pending read began; None between reads
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = None
        if idle is not None:
            self._handle = self._loop.call_at(self._loop.time() + idle, self._check)

    async def next_chunk(self) -> bytes:
        """The upstream's next chunk (b"" at its end)."""
        self._since = self._loop.time()
        try:
            return await self._content.readany()
        finally:
            self._since = None

    def touch(self) -> None:
        """A chunk came while a read waits (relayed by a :class:`Tap`): its limit starts
        again."""
        if self._since is not None:
            self._since = self._loop.time()

    def _check(self) -> None:
        idle = self._idle
        assert idle is not None  # no timer without a limit
        now, since = self._loop.time(), self._since
        if since is None:
            self._handle = self._loop.call_at(now + idle, self._check)
        elif now - since >= idle - CLOCK_SLACK_S:
            self._handle = None
            self._content.set_exception(IdleTimeout())
        else:
            self._handle = self._loop.call_at(since + idle, self._check)

    def close(self) -> None:
        """The stream is over: no timer outlives it."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class Tap:
    """``with``: a stream's chunks relayed to the client as the upstream's parser delivers
    them, in its data callback: no future, task wake-up or coroutine chain per chunk.

    While entered, the upstream's ``StreamReader`` is of the subclass :class:`_Tapped`
    (``__class__`` set: same slots), whose ``feed_data`` hands each chunk to
    :meth:`relay`. A chunk is relayed there, written to the client's transport in the
    chunked framing aiohttp's writer would give it, when nothing waits in the reader
    before it and the client's transport takes it now (not paused by backpressure, not
    closing); otherwise it is buffered as usual, and the relaying task, waiting on
    ``readany``, writes it through ``StreamResponse.write`` (its drain, its
    ``ConnectionError``), chunk order kept either way. ``seen`` is called with each
    chunk relayed here (the task calls it for the ones it writes). The response's
    first write must have gone through ``StreamResponse.write`` (it sends the headers).
    A reader of another type (a decompressing one) is left alone: the task relays all;
    so is every chunk when the client's response is not ``chunked`` (an HTTP/1.0
    client's: its body is the bytes as they are, written by aiohttp's writer).
    """

    __slots__ = ("_chunked", "_content", "_protocol", "_seen", "_watch", "relayed")

    def __init__(
        self,
        content: aiohttp.StreamReader,
        request: web.BaseRequest,
        seen: Callable[[bytes], None],
        watch: IdleWatch,
        *,
        chunked: bool,
    ) -> None:
        self._content = content
        self._protocol = request.protocol
        self._seen = seen
        self._watch = watch
        self._chunked = chunked
        self.relayed = 0  # chunks relayed from the data callback

    def __enter__(self) -> Tap:
        if self._chunked and type(self._content) is aiohttp.StreamReader:
            _TAPS[self._content] = self
            self._content.__class__ = _Tapped
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if _TAPS.pop(self._content, None) is not None:
            self._content.__class__ = aiohttp.StreamReader

    def relay(self, data: bytes) -> bool:
        """Write ``data`` to the client now if its transport takes it; False: buffer it."""
        protocol = self._protocol
        transport = protocol.transport
        if transport is None or transport.is_closing() or protocol.writing_paused:
            return False
        transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        self.relayed += 1
        self._watch.touch()
        self._seen(data)
        return True


_TAPS: dict[aiohttp.StreamReader, Tap] = {}  # the tapped readers, while tapped


class _Tapped(aiohttp.StreamReader):
    """A tapped upstream reader (:class:`Tap`): chunks go to its tap first."""

    __slots__ = ()

    def feed_data(self, data: bytes, size: int = 0) -> bool:
        tap = _TAPS.get(self)
        if tap is None or not data or self._buffer or self._exception is not None:
            return aiohttp.StreamReader.feed_data(self, data, size)
        return tap.relay(data) is False and aiohttp.StreamReader.feed_data(self, data, size)


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
