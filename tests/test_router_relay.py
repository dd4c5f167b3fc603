"""The stream relay's hot path (``streams.Tap``, ``streams.IdleWatch``): chunks written to
the client from the upstream's data callback when its connection takes them, the rest by
the relaying task, in order either way; ``--stream-idle-timeout`` kept by one timer per
stream, which chunks relayed from the callback keep from firing.

Unit tests drive a real aiohttp ``StreamReader`` with a stand-in client connection; the
end-to-end ones run the router in front of an aiohttp backend on real sockets."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from aiohttp import StreamReader, web
from aiohttp.base_protocol import BaseProtocol

from llmsvc.router.streams import IdleTimeout, IdleWatch, Tap
from procs import HOST, free_port
from routerbackends import BODY, CHAT, Backend, Client, MakeRouter, static_router

STREAM = {**BODY, "stream": True}


class FakeTransport:
    """The client's transport: what was written, and whether it is closing."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing


class FakeClient:
    """What a ``Tap`` reads of the request: its protocol's transport and backpressure."""

    def __init__(self) -> None:
        self.transport: FakeTransport | None = FakeTransport()
        self.writing_paused = False

    @property
    def protocol(self) -> FakeClient:
        return self


def reader(loop: asyncio.AbstractEventLoop) -> Any:
    """An upstream's body reader, on a protocol that counts as connected."""
    protocol = BaseProtocol(loop)
    protocol.transport = cast(asyncio.Transport, FakeTransport())
    return StreamReader(protocol, 2**16, loop=loop)


def tap(content: Any, client: FakeClient, seen: list[bytes], idle: float | None = None) -> Tap:
    watch = IdleWatch(content, idle)
    return Tap(content, cast(web.BaseRequest, client), seen.append, watch, chunked=True)


async def test_a_chunk_the_client_takes_is_relayed_from_the_callback() -> None:
    content = reader(asyncio.get_running_loop())
    client, seen = FakeClient(), list[bytes]()
    with tap(content, client, seen) as t:
        content.feed_data(b"data: 1\n\n")
        assert client.transport is not None
        assert client.transport.written == [b"9\r\ndata: 1\n\n\r\n"]  # HTTP chunked framing
        assert seen == [b"data: 1\n\n"] and t.relayed == 1
        assert not content.is_eof() and content._buffer == type(content._buffer)()
    assert type(content).__name__ == "StreamReader"  # restored on exit
    content.feed_data(b"later")  # no longer tapped: buffered for a read
    assert await content.readany() == b"later" and seen == [b"data: 1\n\n"]


async def test_backpressure_buffers_and_order_is_kept() -> None:
    content = reader(asyncio.get_running_loop())
    client, seen = FakeClient(), list[bytes]()
    assert client.transport is not None
    with tap(content, client, seen) as t:
        client.writing_paused = True
        content.feed_data(b"a")  # the client's connection is full: left for the task
        client.writing_paused = False
        content.feed_data(b"b")  # writable again, but "a" waits before it: buffered too
        assert client.transport.written == [] and t.relayed == 0 and seen == []
        assert await content.readany() == b"ab"  # the task relays both, in order
        content.feed_data(b"c")  # nothing waits now: relayed at once
        assert client.transport.written == [b"1\r\nc\r\n"] and seen == [b"c"]
        client.transport.closing = True
        content.feed_data(b"d")  # a client going away: the task's write will tell
        assert await content.readany() == b"d" and t.relayed == 1


async def test_a_failed_reader_relays_nothing_more() -> None:
    content = reader(asyncio.get_running_loop())
    client, seen = FakeClient(), list[bytes]()
    with tap(content, client, seen):
        content.set_exception(IdleTimeout())
        content.feed_data(b"late")
        assert client.transport is not None and client.transport.written == [] and seen == []


async def test_idle_watch_fires_on_silence_not_while_chunks_come() -> None:
    content = reader(asyncio.get_running_loop())
    client, seen = FakeClient(), list[bytes]()
    idle = 0.2
    with tap(content, client, seen, idle=idle) as t:
        watch = t._watch
        read = asyncio.ensure_future(watch.next_chunk())
        for _ in range(8):  # 0.4 s of chunks 0.05 s apart, all relayed by the tap
            await asyncio.sleep(0.05)
            content.feed_data(b"x")
        assert not read.done() and len(seen) == 8  # each chunk started the limit again
        started = time.monotonic()
        with pytest.raises(IdleTimeout):
            await asyncio.wait_for(read, 5)
        assert idle * 0.9 <= time.monotonic() - started < idle + 2
        watch.close()


async def test_idle_watch_does_not_count_time_between_reads() -> None:
    """A client slow to take what was relayed is not the upstream's silence."""
    content = reader(asyncio.get_running_loop())
    watch = IdleWatch(content, 0.1)
    try:
        await asyncio.sleep(0.3)  # no read pending (the task waits on the client)
        content.feed_data(b"x")
        assert await asyncio.wait_for(watch.next_chunk(), 5) == b"x"
        with pytest.raises(IdleTimeout):
            await asyncio.wait_for(watch.next_chunk(), 5)
    finally:
        watch.close()


# End to end: the router in front of a backend streaming many chunks.

CHUNKS = 3000
PAD = "x" * 600  # about 2 MiB in all: more than the sockets' buffers hold


def event(i: int) -> bytes:
    return b"data: " + orjson.dumps({"i": i, "pad": PAD}) + b"\n\n"


async def streaming(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    gap = body.get("gap", 0.0)
    for i in range(body.get("chunks", CHUNKS)):
        await resp.write(event(i))
        if gap:
            await asyncio.sleep(gap)
    if body.get("stall"):
        await asyncio.sleep(30)
    await resp.write(b"data: [DONE]\n\n")
    return resp


async def health(_: web.Request) -> web.Response:
    return web.json_response({})


@pytest.fixture
async def upstream() -> AsyncIterator[int]:
    """The streaming backend's port."""
    app = web.Application()
    app.router.add_post(CHAT, streaming)
    app.router.add_get("/health", health)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, HOST, port).start()
    try:
        yield port
    finally:
        await runner.cleanup()


@pytest.fixture
def make_router(
    aiohttp_client: Callable[..., Awaitable[Client]], tmp_path: Path, upstream: int
) -> MakeRouter:
    record = Backend("s", port=upstream)  # only its record is used: the app above serves
    return functools.partial(static_router, aiohttp_client, tmp_path, [record])


async def test_a_slow_client_gets_every_chunk_in_order(make_router: MakeRouter) -> None:
    client = await make_router()
    resp = await client.post(CHAT, json=STREAM)
    assert resp.status == 200
    got = bytearray()
    while piece := await asyncio.wait_for(resp.content.read(16384), 10):
        got += piece
        await asyncio.sleep(0.002)  # slower than the backend: the router's writes back up
    expected = b"".join(event(i) for i in range(CHUNKS)) + b"data: [DONE]\n\n"
    assert bytes(got) == expected


async def test_idle_timeout_fires_after_relayed_chunks_not_during_them(
    make_router: MakeRouter,
) -> None:
    client = await make_router(stream_idle_timeout=0.3)
    body = {**STREAM, "chunks": 12, "gap": 0.05, "stall": True}  # 0.6 s of chunks, then none
    resp = await client.post(CHAT, json=body)
    text = (await asyncio.wait_for(resp.read(), 10)).decode()
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert [orjson.loads(e)["i"] for e in events[:-1]] == list(range(12))
    assert orjson.loads(events[-1])["error"]["code"] == "stream_idle_timeout"


async def test_an_http10_client_gets_the_stream_as_sent(make_router: MakeRouter) -> None:
    """No chunked encoding for HTTP/1.0: nothing is relayed in its framing."""
    client = await make_router()
    payload = orjson.dumps({**STREAM, "chunks": 50})
    head = (
        f"POST {CHAT} HTTP/1.0\r\nHost: router\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(head.encode() + payload)
        data = await asyncio.wait_for(reader.read(), 10)  # HTTP/1.0: the body ends at close
    finally:
        writer.close()
    headers, _, body = data.partition(b"\r\n\r\n")
    assert headers.startswith(b"HTTP/1.") and b" 200 " in headers.split(b"\r\n")[0]
    assert b"transfer-encoding" not in headers.lower()
    assert body == b"".join(event(i) for i in range(50)) + b"data: [DONE]\n\n"
