"""The router keeps no cookies: a backend's ``Set-Cookie`` goes to the client that got the
answer, and is never sent back by the router with the next client's request (the upstream
session's jar is aiohttp's ``DummyCookieJar``; the default jar would keep cookies of a
backend named by host name, as in Kubernetes)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from llmsvc.router.app import create_app
from llmsvc.router.settings import RouterSettings
from procs import HOST, free_port
from routerbackends import BODY, CHAT, Client


@pytest.fixture
async def backend() -> AsyncIterator[tuple[int, list[str | None]]]:
    """A backend that sets a cookie on every answer; its port and the Cookie headers seen."""
    seen: list[str | None] = []

    async def chat(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        response = web.json_response({"ok": True})
        response.set_cookie("session", "backend-secret", max_age=3600)
        return response

    async def health(_: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application()
    app.router.add_post(CHAT, chat)
    app.router.add_get("/health", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, HOST, port).start()
    try:
        yield port, seen
    finally:
        await runner.cleanup()


async def test_a_backends_cookie_is_never_sent_with_another_request(
    aiohttp_client: Callable[..., Awaitable[Client]],
    tmp_path: Path,
    backend: tuple[int, list[str | None]],
) -> None:
    port, seen = backend
    record = {"name": "b", "host": "localhost", "port": port, "metadata": {"models": ["m"]}}
    path = tmp_path / "services.json"
    path.write_bytes(orjson.dumps([record]))
    settings = RouterSettings(static_services=str(path), health_interval=60)
    client = await aiohttp_client(create_app(settings, registry=CollectorRegistry()))
    first = await client.post(CHAT, json=BODY)
    assert first.status == 200 and "backend-secret" in first.headers.get("Set-Cookie", "")
    client.session.cookie_jar.clear()  # the next request is another client's: no cookie
    second = await client.post(CHAT, json=BODY)
    assert second.status == 200
    assert seen == [None, None]
