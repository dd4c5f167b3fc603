"""Stand-in engines for the router's in-process tests: small aiohttp apps on real sockets
whose misbehaviour each test controls, and a router in front of them from a static file.

A :class:`Backend`'s ``mode`` says how it answers every request (``ok``, ``fail``: 500,
``slow``: no headers for ``slow_s`` (30) s, ``stream``: one chunk then the rest once ``go`` is set,
``stall``, ``die``: the connection drops mid-stream; ``linger``: one chunk and ``[DONE]``,
then the stream's end ``linger_s`` (0.3) s later; ``hung``: like a SIGSTOPped engine,
nothing answers, not even ``/health``). Whatever the mode, a body whose
content is the string ``"poison"`` gets a 500 (a request that fails wherever it goes) and
one whose content is ``"hang"`` gets nothing for 5 s.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from llmsvc.router.app import create_app
from llmsvc.router.settings import RouterSettings
from procs import HOST, free_port

Client = TestClient[web.Request, web.Application]
MakeRouter = Callable[..., Awaitable[Client]]
CHAT = "/v1/chat/completions"
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
POISON = {"model": "m", "messages": [{"role": "user", "content": "poison"}]}
HANG = {"model": "m", "messages": [{"role": "user", "content": "hang"}]}


@dataclass
class Backend:
    """A stand-in engine; ``mode`` says how it answers the next requests."""

    name: str
    mode: str = "ok"
    healthy: bool = True
    slow_s: float = 30.0
    linger_s: float = 0.3
    hits: int = 0
    seen_headers: list[dict[str, str]] = field(default_factory=list)
    seen_bodies: list[bytes] = field(default_factory=list)
    seen_peers: set[object] = field(default_factory=set)
    go: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "host": HOST, "port": self.port, "metadata": {"models": ["m"]}}

    async def health(self, _: web.Request) -> web.Response:
        if self.mode == "hung":
            await asyncio.sleep(3600)
        return web.json_response({}, status=200 if self.healthy else 503)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        self.seen_headers.append(dict(request.headers))
        body = await request.read()
        self.seen_bodies.append(body)
        assert request.transport is not None
        self.seen_peers.add(request.transport.get_extra_info("peername"))
        try:
            return await self._answer(request, body)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def _answer(self, request: web.Request, body: bytes) -> web.StreamResponse:
        if self.mode == "hung":
            await asyncio.sleep(3600)
        if b'"hang"' in body:  # a request no engine answers in time
            await asyncio.sleep(5)
        if self.mode == "fail" or b'"poison"' in body:
            return web.json_response({"error": "boom"}, status=500)
        if self.mode == "slow":  # no headers for a long time
            await asyncio.sleep(self.slow_s)
        if self.mode == "ok":
            headers = {"X-Upstream": self.name, "Keep-Alive": "timeout=5"}
            return web.json_response({"served_by": self.name}, headers=headers)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"n": 1}\n\n')
        if self.mode == "stream":  # the rest only once the test says so
            await self.go.wait()
            await resp.write(b'data: {"n": 2}\n\n')
            await resp.write(b"data: [DONE]\n\n")
            return resp
        if self.mode == "linger":  # [DONE], then the chunked terminator a while later
            await resp.write(b"data: [DONE]\n\n")
            await asyncio.sleep(self.linger_s)
        if self.mode == "stall":
            await asyncio.sleep(30)
        if self.mode == "die":  # the connection drops mid-stream
            assert request.transport is not None
            request.transport.abort()
        return resp


@contextlib.asynccontextmanager
async def running(*backends: Backend) -> AsyncIterator[None]:
    """Serve ``backends`` on free ports of 127.0.0.1 (each gets its ``port``) while inside."""
    runners = []
    for backend in backends:
        app = web.Application()
        app.router.add_get("/health", backend.health)
        app.router.add_post(CHAT, backend.chat)
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        backend.port = free_port()
        await web.TCPSite(runner, HOST, backend.port).start()
        runners.append(runner)
    try:
        yield
    finally:
        for runner in runners:
            await runner.cleanup()


async def static_router(
    aiohttp_client: Callable[..., Awaitable[Client]],
    tmp_path: Path,
    backends: Sequence[Backend],
    **options: Any,
) -> Client:
    """A router whose ``--static-services`` are ``backends`` (health checks every 60 s
    unless ``options`` say otherwise), driven through aiohttp's test client."""
    path = tmp_path / "services.json"
    path.write_bytes(orjson.dumps([b.record() for b in backends]))
    options.setdefault("health_interval", 60)
    settings = RouterSettings(static_services=str(path), **options)
    return await aiohttp_client(create_app(settings, registry=CollectorRegistry()))
