"""Health checks and the heartbeat TTL against a real small server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from llmsvc.registry.app import create_app
from llmsvc.registry.settings import RegistrySettings


@dataclass
class Flaky:
    """A backend whose health answer the test flips."""

    status: int = 200
    delay: float = 0.0
    hits: int = 0


@pytest.fixture
async def backend(aiohttp_server: Any) -> tuple[Flaky, TestServer]:
    state = Flaky()

    async def health(_: web.Request) -> web.Response:
        state.hits += 1
        if state.delay:
            await asyncio.sleep(state.delay)
        return web.Response(status=state.status, text="state")

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/custom/ready", health)
    server: TestServer = await aiohttp_server(app, host="127.0.0.1")
    return state, server


MakeClient = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def make_client(aiohttp_client: Any) -> MakeClient:
    async def _make(**overrides: Any) -> TestClient[Any, Any]:
        values = {
            "health_interval": 60,
            "cleanup_interval": 60,
            "health_timeout": 1,
            "allow_anonymous_writes": True,
            **overrides,
        }
        app = create_app(RegistrySettings(**values), registry=CollectorRegistry())
        client: TestClient[Any, Any] = await aiohttp_client(app)
        return client

    return _make


def registration(server: TestServer, name: str = "engine-a", **extra: Any) -> dict[str, Any]:
    return {"name": name, "host": "127.0.0.1", "port": server.port, **extra}


async def eventually(predicate: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_check_now_follows_the_backend(
    make_client: MakeClient, backend: tuple[Flaky, TestServer]
) -> None:
    state, server = backend
    client = await make_client()
    await client.post("/services", json=registration(server))

    resp = await client.get("/services/engine-a/health")
    assert resp.status == 200
    result = await resp.json()
    assert result["healthy"] is True
    assert result["http_status"] == 200
    assert result["error"] is None
    assert result["url"] == f"http://127.0.0.1:{server.port}/health"
    assert result["service"]["status"] == "healthy"
    assert result["service"]["last_check"] is not None

    state.status = 500
    for failures in (1, 2):
        result = await (await client.get("/services/engine-a/health")).json()
        assert result["healthy"] is False
        assert result["http_status"] == 500
        assert result["error"] == "HTTP 500"
        assert result["service"]["status"] == "unhealthy"
        assert result["service"]["consecutive_failures"] == failures

    state.status = 204
    result = await (await client.get("/services/engine-a/health")).json()
    assert result["service"]["status"] == "healthy"
    assert result["service"]["consecutive_failures"] == 0
    assert state.hits == 4
    assert (await client.get("/services/ghost/health")).status == 404


async def test_health_path_from_metadata_and_timeout(
    make_client: MakeClient, backend: tuple[Flaky, TestServer]
) -> None:
    state, server = backend
    client = await make_client(health_timeout=0.2)
    meta = {"health_path": "custom/ready"}
    await client.post("/services", json=registration(server, metadata=meta))
    result = await (await client.get("/services/engine-a/health")).json()
    assert result["url"].endswith("/custom/ready")
    assert result["healthy"] is True

    state.delay = 1.0
    started = time.monotonic()
    result = await (await client.get("/services/engine-a/health")).json()
    assert time.monotonic() - started < 0.9
    assert result["healthy"] is False
    assert "timed out" in result["error"]


async def test_background_checks_flip_status_and_index(
    make_client: MakeClient, backend: tuple[Flaky, TestServer]
) -> None:
    state, server = backend
    client = await make_client(health_interval=0.1)
    await client.post("/services", json=registration(server))
    await client.post("/services", json={"name": "dead", "host": "127.0.0.1", "port": 1})

    async def status_of(name: str) -> str:
        return str((await (await client.get(f"/services/{name}")).json())["status"])

    async def is_(name: str, status: str) -> bool:
        return await status_of(name) == status

    await eventually(lambda: is_("dead", "unhealthy"))
    assert await status_of("engine-a") == "healthy"
    index = int((await client.get("/services")).headers["X-Llmsvc-Index"])
    state.status = 503
    await eventually(lambda: is_("engine-a", "unhealthy"))
    assert int((await client.get("/services")).headers["X-Llmsvc-Index"]) == index + 1
    state.status = 200
    await eventually(lambda: is_("engine-a", "healthy"))
    metrics = await (await client.get("/metrics")).text()
    assert 'llmsvc_registry_health_checks_total{result="success"}' in metrics
    assert 'llmsvc_registry_health_checks_total{result="failure"} 0.0' not in metrics


async def test_ttl_unhealthy_then_removed(
    make_client: MakeClient, backend: tuple[Flaky, TestServer]
) -> None:
    _, server = backend
    client = await make_client(heartbeat_ttl=0.4, cleanup_interval=0.1)
    await client.post("/services", json=registration(server, "silent"))
    resp = await client.post("/services", json=registration(server, "chatty", port=server.port))
    lease = {"X-Llmsvc-Lease": (await resp.json())["lease"]}

    async def beat() -> None:
        while True:
            assert (await client.post("/services/chatty/heartbeat", headers=lease)).status == 200
            await asyncio.sleep(0.1)

    beater = asyncio.create_task(beat())
    try:
        seen: set[str] = set()

        async def removed() -> bool:
            resp = await client.get("/services/silent")
            if resp.status == 404:
                return True
            seen.add((await resp.json())["status"])
            return False

        await eventually(removed, timeout=5)
        assert seen == {"healthy", "unhealthy"}
        chatty = await (await client.get("/services/chatty")).json()
        assert chatty["status"] == "healthy"
    finally:
        beater.cancel()
    metrics = await (await client.get("/metrics")).text()
    assert 'llmsvc_registry_removed_total{reason="ttl_expired"} 1.0' in metrics
