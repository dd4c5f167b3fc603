"""``core.serving``: parser errors in the OpenAI shape for our servers only, the graceful
drain, and the aiohttp internals both rely on (the version range pinned in pyproject.toml).

Each test serves a real ``web.Application`` on a socket of 127.0.0.1 in the test's own
loop and talks to it over raw connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import tomllib
from collections.abc import AsyncIterator
from importlib.metadata import version
from pathlib import Path

import orjson
from aiohttp import web, web_protocol
from packaging.requirements import Requirement
from packaging.version import Version

from llmsvc.core.app import Route, make_app
from llmsvc.core.jsonio import json_response
from llmsvc.core.serving import (
    ServiceRunner,
    ShapedRequestHandler,
    ShapedServer,
    bind_sockets,
    serving,
)
from procs import HOST, free_port

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
MALFORMED = b"GET /health HTTP/1.1 garbage\r\nHost: x\r\n\r\n"


async def health(_: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def handle(_: web.BaseRequest) -> web.StreamResponse:
    return web.Response()


def _app() -> web.Application:
    return make_app(title="t", version="1", routes=[Route("GET", "/health", health, "Health")])


@contextlib.asynccontextmanager
async def _served(app: web.Application) -> AsyncIterator[tuple[int, asyncio.Event]]:
    """``app`` served by ``core.serving`` on a free port until the event is set."""
    port = free_port()
    sockets = bind_sockets(HOST, port)  # listening already: connections queue until served
    stop = asyncio.Event()

    async def run() -> None:
        async with serving(app, name="t", sockets=sockets, shutdown_timeout=5):
            await stop.wait()

    task = asyncio.create_task(run())
    try:
        yield port, stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


@contextlib.asynccontextmanager
async def _plain(app: web.Application) -> AsyncIterator[int]:
    """``app`` served by aiohttp's own ``AppRunner``, as any other server in the process."""
    port = free_port()
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, HOST, port).start()
        yield port
    finally:
        await runner.cleanup()


async def _exchange(
    port: int, raw: bytes, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw`` (on ``conn`` or a new connection); status, headers and body of the answer."""
    reader, writer = conn or await asyncio.open_connection(HOST, port)
    writer.write(raw)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    if conn is None:
        writer.close()
    return int(lines[0].split()[1]), headers, body


async def test_parser_errors_have_the_openai_shape_only_on_our_servers() -> None:
    async with _served(_app()) as (ours, _), _plain(_app()) as theirs:
        status, headers, body = await _exchange(ours, MALFORMED)
        assert status == 400, body
        assert headers["content-type"].startswith("application/json"), headers
        error = orjson.loads(body)["error"]
        assert error["code"] == "bad_http_request", error
        assert "garbage" not in error["message"], "the error echoes the request's bytes"
        # Another aiohttp server in the same process, even one of our apps, is untouched.
        status, headers, body = await _exchange(theirs, MALFORMED)
        assert status == 400, body
        assert headers["content-type"].startswith("text/plain"), headers
        assert b'"error"' not in body


async def test_a_keep_alive_connection_is_served_while_draining_then_closed() -> None:
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    async with _served(_app()) as (port, stop):
        conn = await asyncio.open_connection(HOST, port)
        status, headers, _ = await _exchange(port, request, conn)
        assert status == 200 and headers.get("connection", "").lower() != "close", headers
        stop.set()  # as SIGTERM does: the listener closes, open connections drain
        for _ in range(100):
            try:
                _, probe = await asyncio.open_connection(HOST, port)
            except OSError:
                break
            probe.close()
            await asyncio.sleep(0.005)
        else:
            raise AssertionError("the listener is still open after the stop")
        # The client's next request on its open connection is answered, and told to go.
        status, headers, _ = await _exchange(port, request, conn)
        assert status == 200
        assert headers.get("connection", "").lower() == "close", headers
        assert await asyncio.wait_for(conn[0].read(), 5) == b"", "the connection stays open"


def test_the_installed_aiohttp_is_in_the_pinned_range() -> None:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    (pin,) = (Requirement(d) for d in deps if Requirement(d).name == "aiohttp")
    assert pin.specifier, "aiohttp must be pinned to the range core/serving.py was checked on"
    assert Version(version("aiohttp")) in pin.specifier, (version("aiohttp"), str(pin))
    assert not pin.specifier.contains("4.0"), "aiohttp 4 changes the server's internals"


async def test_the_aiohttp_internals_we_build_on_are_there() -> None:
    # The method our handler overrides, with the arguments aiohttp passes it.
    params = list(inspect.signature(web_protocol.RequestHandler.handle_error).parameters)
    assert params == ["self", "request", "status", "exc", "message"], params
    # web.Server makes each connection's handler in __call__ from _loop and _kwargs.
    assert "__call__" in vars(web.Server)
    plain = web.Server(handle, handler_cancellation=True, keepalive_timeout=3.0)
    assert plain._kwargs == {"keepalive_timeout": 3.0}
    shaped = ShapedServer.like(plain)
    assert (shaped.request_handler, shaped.request_factory) == (handle, plain.request_factory)
    assert shaped.handler_cancellation and shaped._kwargs == plain._kwargs
    handler = shaped()
    assert type(handler) is ShapedRequestHandler
    assert handler._keepalive_timeout == 3.0
    # AppRunner builds its server in the coroutine our runner overrides.
    assert inspect.iscoroutinefunction(web.AppRunner._make_server)
    assert ServiceRunner._make_server is not web.AppRunner._make_server
