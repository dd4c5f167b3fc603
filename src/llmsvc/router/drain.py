"""Serving the router with a graceful stop that loses no request, also across a rolling restart.

aiohttp's own stop (``core.app.serve``: ``web.run_app``) closes the listener
and, in the same instant, every connection that has no request in progress,
which includes keep-alive connections a client is about to reuse and
connections accepted a moment ago whose first request is still on its way:
those requests are lost (the client sees a reset or a closed connection, and
cannot tell whether the request was processed). So on SIGTERM/SIGINT the
router stops in three steps:

1. Close the listener: no new connections. Behind one port with
   ``--reuse-port`` or ``--workers``, new connections go to the other
   processes (set ``net.ipv4.tcp_migrate_req=1`` so that the kernel hands
   them the connections still queued on this one, see docs/reliability.md).
2. Drain for up to :data:`DRAIN_LINGER_S`: keep serving the open connections,
   every answer with ``Connection: close``, until no connection is left.
3. aiohttp's stop: the connections still idle are closed; requests and
   streams in flight get up to ``--shutdown-timeout`` seconds to finish.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import socket
import ssl
import time

from aiohttp import hdrs, web

from llmsvc.core.app import bind_sockets, new_event_loop
from llmsvc.core.jsonio import DEFAULT_READ_TIMEOUT, READ_TIMEOUT

log = logging.getLogger("llmsvc.router.drain")

DRAIN_LINGER_S = 1.0  # the longest step 2 takes; it ends as soon as no connection is open
_POLL_S = 0.02


def serve_draining(
    app: web.Application,
    *,
    name: str,
    host: str,
    port: int,
    shutdown_timeout: float,
    ssl_context: ssl.SSLContext | None = None,
    reuse_port: bool = False,
    linger: float = DRAIN_LINGER_S,
) -> int:
    """Run ``app`` until SIGTERM/SIGINT, then stop as above. Returns an exit code."""
    try:
        sockets = bind_sockets(host, port, reuse_port=reuse_port)
    except OSError as exc:
        log.error("%s cannot listen on %s:%d: %s", name, host, port, exc.strerror or exc)
        return 1
    draining = asyncio.Event()

    async def on_prepare(_: web.Request, response: web.StreamResponse) -> None:
        if draining.is_set():  # the client's next request goes to a new connection, elsewhere
            response.headers[hdrs.CONNECTION] = "close"  # the headers are built: say it here
            response.force_close()  # and close once this answer is sent

    app.on_response_prepare.append(on_prepare)
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=shutdown_timeout,
        # As core.app.serve: a connection that has not sent a whole request line and
        # headers within the read timeout is closed (slowloris), as is an idle one.
        keepalive_timeout=app.get(READ_TIMEOUT, DEFAULT_READ_TIMEOUT),
    )
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_run(runner, sockets, ssl_context, draining, linger, name))
    finally:
        loop.run_until_complete(runner.cleanup())  # step 3; runs the app's cleanup too
        loop.close()
    return 0


async def _run(
    runner: web.AppRunner,
    sockets: list[socket.socket],
    ssl_context: ssl.SSLContext | None,
    draining: asyncio.Event,
    linger: float,
    name: str,
) -> None:
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sites = [web.SockSite(runner, sock, ssl_context=ssl_context) for sock in sockets]
    for site in sites:
        await site.start()
    log.info("%s listening on %s", name, ", ".join(site.name for site in sites))
    await stop.wait()
    for site in sites:  # step 1
        await site.stop()
    draining.set()  # step 2
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
