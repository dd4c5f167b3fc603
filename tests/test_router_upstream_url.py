"""The router builds every upstream URL from a record's origin and the client's path.

A record stored before the registry refused paths (here: a state file) still has one;
the router must never prefix it to the client's path (issue 11, item 1).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from llmsvc.router.app import create_app
from llmsvc.router.config import ConfigError, load_static_services
from llmsvc.router.settings import RouterSettings
from procs import HOST, Spawn, start_registry

Client = TestClient[web.Request, web.Application]
BODY = {"model": "pwn", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
ANSWER = {"id": "x", "object": "chat.completion", "choices": [], "model": "pwn"}


async def recording_backend(
    aiohttp_server: Callable[..., Awaitable[TestServer]], seen: list[str]
) -> TestServer:
    """An engine that answers every path and records each path and query it was sent."""

    async def anything(request: web.Request) -> web.Response:
        seen.append(request.path_qs)
        return web.json_response(ANSWER)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    return await aiohttp_server(app, host=HOST)


async def test_a_stored_path_is_never_prefixed(
    spawn: Spawn,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    aiohttp_client: Callable[..., Awaitable[Client]],
    tmp_path: Path,
) -> None:
    seen: list[str] = []
    backend = await recording_backend(aiohttp_server, seen)
    now = time.time()
    stored: dict[str, Any] = {
        "name": "x",
        "host": HOST,
        "port": backend.port,
        "url": f"http://{HOST}:{backend.port}/drain?x=",
        "type": "openai-api",
        "metadata": {"models": ["pwn"]},
        "registered_at": now,
        "last_heartbeat": now,
    }
    state = tmp_path / "state.json"
    state.write_bytes(orjson.dumps({"version": 1, "index": 1, "services": [stored]}))
    _, registry = start_registry(spawn, "--state-file", str(state))
    settings = RouterSettings(registry_url=registry, health_interval=60)
    client = await aiohttp_client(create_app(settings, registry=CollectorRegistry()))

    deadline = time.monotonic() + 10
    while True:
        resp = await client.post("/v1/chat/completions", json=BODY)
        if resp.status == 200 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert resp.status == 200, await resp.text()
    chats = [p for p in seen if "chat" in p]
    assert chats == ["/v1/chat/completions"], seen
    assert not [p for p in seen if "drain" in p], seen


def test_a_static_service_with_a_path_stops_the_router(tmp_path: Path) -> None:
    static = tmp_path / "static.json"
    record = {"name": "x", "host": HOST, "port": 1, "url": f"http://{HOST}:1/drain?x="}
    static.write_bytes(orjson.dumps([record]))
    with pytest.raises(ConfigError, match=r"service #1: Invalid 'url': .*origin"):
        load_static_services(str(static))
    static.write_bytes(orjson.dumps([{**record, "url": f"http://{HOST}:1/"}]))
    (loaded,) = load_static_services(str(static))
    assert loaded.url == f"http://{HOST}:1" == loaded.origin()


async def test_an_absolute_form_request_goes_to_the_origin(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    aiohttp_client: Callable[..., Awaitable[Client]],
    tmp_path: Path,
) -> None:
    """``POST http://elsewhere/v1/... HTTP/1.1``: only the path and query are forwarded."""
    seen: list[str] = []
    backend = await recording_backend(aiohttp_server, seen)
    static = tmp_path / "static.json"
    record = {"name": "x", "host": HOST, "port": backend.port, "metadata": {"models": ["pwn"]}}
    static.write_bytes(orjson.dumps([record]))
    settings = RouterSettings(static_services=str(static), health_interval=60)
    client = await aiohttp_client(create_app(settings, registry=CollectorRegistry()))
    body = orjson.dumps(BODY)
    target = "http://evil.example:9/v1/chat/completions?a=%20b"
    reader, writer = await asyncio.open_connection(HOST, client.port)
    writer.write(
        f"POST {target} HTTP/1.1\r\nHost: evil.example\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert [p for p in seen if "chat" in p] == ["/v1/chat/completions?a=%20b"], seen
