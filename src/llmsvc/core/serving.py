"""The one way every HTTP service runs: bind first, serve, then stop without losing a request.

:func:`serve` runs an app in a process of its own (router, registry, babysitter,
simulated engine); :func:`serving` is the same inside a loop that runs other work
as well (the operator runs kopf beside its endpoint). Either one:

1. Binds the listening sockets before the app starts (:func:`bind_sockets`): a
   busy port is reported before any background work (a babysitter's engine) has
   begun.
2. Runs the app behind :class:`ServiceRunner`, whose connections answer requests
   that aiohttp's HTTP parser rejects (an over-long header line, too many headers,
   a malformed request line) in the OpenAI error shape instead of aiohttp's plain
   text. Only servers started here are affected: aiohttp has no public hook for
   it, so this is a subclass of its request handler used by our server alone,
   never a patch of aiohttp for the whole process.
3. On SIGTERM/SIGINT (or when ``stop`` is set) stops in three steps:

   a. Close the listener: no new connections. Behind one port with
      ``--reuse-port`` or ``--workers``, new connections go to the other
      processes (set ``net.ipv4.tcp_migrate_req=1`` so that the kernel hands
      them the connections still queued on this one, see docs/reliability.md).
   b. Drain for up to :data:`DRAIN_LINGER_S`: keep serving the open
      connections, every answer with ``Connection: close``, until no
      connection is left.
   c. aiohttp's stop: the connections still idle are closed; requests and
      streams in flight get up to ``shutdown_timeout`` seconds to finish; then
      the app's cleanup runs.

Step b is there because aiohttp's own stop closes the listener and, in the same
instant, every connection that has no request in progress, which includes
keep-alive connections a client is about to reuse and connections accepted a
moment ago whose first request is still on its way: those requests would be lost
(the client sees a reset or a closed connection, and cannot tell whether the
request was processed).

The aiohttp internals :class:`ServiceRunner` relies on are pinned in
``pyproject.toml`` and checked by ``tests/test_core_serving.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from aiohttp import hdrs, web, web_protocol

from llmsvc.core.errors import protocol_error_response
from llmsvc.core.jsonio import DEFAULT_READ_TIMEOUT, READ_TIMEOUT

log = logging.getLogger("llmsvc.serving")

DRAIN_LINGER_S = 1.0  # the longest step b takes; it ends as soon as no connection is open
_POLL_S = 0.02


class ShapedRequestHandler(web_protocol.RequestHandler):
    """aiohttp's per-connection handler, answering parser errors in the OpenAI shape."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs; raises if a response began
        return protocol_error_response(status, exc)


class ShapedServer(web.Server):
    """aiohttp's low-level server, whose connections get a :class:`ShapedRequestHandler`.

    aiohttp 3.x hard-codes ``RequestHandler`` in ``web.Server.__call__``; this
    builds the same handler, of our class, with the same arguments.
    """

    def __call__(self) -> web_protocol.RequestHandler:
        return ShapedRequestHandler(self, loop=self._loop, **self._kwargs)

    @classmethod
    def like(cls, server: web.Server) -> ShapedServer:
        """A server like ``server`` (the app's handler, request factory and handler options)."""
        return cls(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **server._kwargs,
        )


class ServiceRunner(web.AppRunner):
    """An ``AppRunner`` whose server is a :class:`ShapedServer`."""

    async def _make_server(self) -> web.Server:
        return ShapedServer.like(await super()._make_server())  # super() starts the app


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when it is installed, else the standard loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def ssl_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """A server TLS context from a PEM certificate and key; None without a certificate."""
    if not cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def bind_sockets(host: str, port: int, *, reuse_port: bool = False) -> list[socket.socket]:
    """Listening sockets for every address ``host`` resolves to (as asyncio binds them).

    Binding before the app starts means a busy port is reported before any
    background work (a babysitter's engine) has begun.
    """
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(1024)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def serve(
    app: web.Application,
    *,
    name: str,
    host: str,
    port: int,
    shutdown_timeout: float,
    ssl_context: ssl.SSLContext | None = None,
    reuse_port: bool = False,
    stop: asyncio.Event | None = None,
) -> int:
    """Run ``app`` until SIGTERM/SIGINT (or until ``stop`` is set), then stop as the
    module says. Returns an exit code: 1 when the port cannot be bound, else 0."""
    try:
        sockets = bind_sockets(host, port, reuse_port=reuse_port)
    except OSError as exc:
        log.error("%s cannot listen on %s:%d: %s", name, host, port, exc.strerror or exc)
        return 1
    stopping = stop if stop is not None else asyncio.Event()

    async def until_stopped() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        async with serving(
            app,
            name=name,
            sockets=sockets,
            shutdown_timeout=shutdown_timeout,
            ssl_context=ssl_context,
        ):
            await stopping.wait()

    # As asyncio.run: tasks still pending at the end are cancelled and awaited.
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(until_stopped())
    return 0


@contextlib.asynccontextmanager
async def serving(
    app: web.Application,
    *,
    name: str,
    sockets: list[socket.socket],
    shutdown_timeout: float,
    ssl_context: ssl.SSLContext | None = None,
    linger: float = DRAIN_LINGER_S,
) -> AsyncIterator[None]:
    """Serve ``app`` on ``sockets`` (from :func:`bind_sockets`) for the body of the
    ``async with``; on leaving it, drain and stop as the module says."""
    draining = asyncio.Event()
    app.on_response_prepare.append(_close_connections_when(draining))
    runner = ServiceRunner(
        app,
        access_log=None,
        shutdown_timeout=shutdown_timeout,
        # A connection that has not sent a whole request line and headers within the
        # read timeout is closed (slowloris), as is an idle keep-alive one.
        keepalive_timeout=app.get(READ_TIMEOUT, DEFAULT_READ_TIMEOUT),
    )
    try:
        await runner.setup()
        sites = [web.SockSite(runner, sock, ssl_context=ssl_context) for sock in sockets]
        for site in sites:
            await site.start()
        log.info("%s listening on %s", name, ", ".join(site.name for site in sites))
        try:
            yield
        finally:
            await _drain(runner, sites, draining, linger=linger, name=name)
    finally:
        await runner.cleanup()  # step c; runs the app's cleanup too


def _close_connections_when(
    draining: asyncio.Event,
) -> Callable[[web.Request, web.StreamResponse], Coroutine[Any, Any, None]]:
    """An ``on_response_prepare`` hook: once draining, every answer closes its connection."""

    async def on_prepare(_: web.Request, response: web.StreamResponse) -> None:
        if draining.is_set():  # the client's next request goes to a new connection, elsewhere
            response.headers[hdrs.CONNECTION] = "close"  # the headers are built: say it here
            response.force_close()  # and close once this answer is sent

    return on_prepare


async def _drain(
    runner: web.AppRunner,
    sites: list[web.SockSite],
    draining: asyncio.Event,
    *,
    linger: float,
    name: str,
) -> None:
    """Steps a and b: close the listeners, then serve the open connections until none is
    left or ``linger`` seconds have passed."""
    for site in sites:
        await site.stop()
    draining.set()
    log.info("%s stopping: listener closed, draining %d connections", name, _open(runner))
    deadline = time.monotonic() + linger
    # aiohttp has no event for "the last connection closed": look every few milliseconds.
    for _ in range(math.ceil(linger / _POLL_S)):
        if not _open(runner) or time.monotonic() >= deadline:
            break
        await asyncio.sleep(_POLL_S)
    log.info("%s drained: %d connections left (in flight or idle)", name, _open(runner))


def _open(runner: web.AppRunner) -> int:
    server = runner.server
    return 0 if server is None else len(server.connections)
