"""The router watching a real ``llmsvc registry`` with its blocking query."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

import metrics
from llmsvc.router.app import create_app
from llmsvc.router.settings import RouterSettings
from procs import HOST, Spawn, free_port, start_registry

Client = TestClient[web.Request, web.Application]
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


async def eventually(probe: Callable[[], Awaitable[Any]], expected: Any, timeout: float) -> float:
    """Seconds until ``probe()`` returns ``expected``; fails after ``timeout``."""
    started = time.monotonic()
    while (value := await probe()) != expected:
        assert time.monotonic() - started < timeout, f"still {value!r}, expected {expected!r}"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_registry_watch(
    spawn: Spawn,
    aiohttp_client: Callable[..., Awaitable[Client]],
    tmp_path: Path,
) -> None:
    reg_proc, registry = start_registry(spawn)
    port = free_port()
    engine = spawn(
        "e1", "sim-engine", "--port", str(port), "--model-name", "m", "--engine-id", "e1",
        "--time-scale", "0",
    )  # fmt: skip
    engine.wait_http(f"http://{HOST}:{port}/health")
    record = {"name": "e1", "host": HOST, "port": port, "metadata": {"models": ["m"]}}
    static = tmp_path / "static.json"
    static.write_bytes(orjson.dumps([{**record, "name": "st"}]))
    settings = RouterSettings(
        registry_url=registry,
        static_services=str(static),
        registry_sync_interval=5,  # a poll would take 5 s: changes must come by the watch
        health_interval=60,
    )
    client = await aiohttp_client(create_app(settings, registry=CollectorRegistry()))

    async def names() -> list[str]:
        services = (await (await client.get("/services")).json())["services"]
        return sorted(s["name"] for s in services if s["eligible"])

    async def registry_up() -> float:
        text = await (await client.get("/metrics")).text()
        return metrics.value(text, "llmsvc_router_registry_up")

    await eventually(registry_up, 1.0, 5)
    assert await names() == ["st"]
    async with httpx.AsyncClient(base_url=registry) as reg:
        first = await reg.post("/services", json=record)
        assert first.status_code == 201
        sitter = {"name": "e1-babysitter", "host": HOST, "port": port, "type": "babysitter"}
        assert (await reg.post("/services", json=sitter)).status_code == 201
        assert await eventually(names, ["e1", "st"], 3) < 2
        resp = await client.post("/v1/chat/completions", json=BODY)
        assert resp.status == 200

        lease = {"X-Llmsvc-Lease": first.json()["lease"]}  # the holder removes its record
        assert (await reg.delete("/services/e1", headers=lease)).status_code == 200
        assert await eventually(names, ["st"], 3) < 2

        # A record the registry finds unhealthy is kept out of routing.
        dead = {"name": "dead", "host": HOST, "port": free_port(), "metadata": {"models": ["m"]}}
        assert (await reg.post("/services", json=dead)).status_code == 201
        assert (await reg.post("/services", json=record)).status_code == 201
        await eventually(names, ["e1", "st"], 3)

        async def dead_view() -> tuple[bool, bool] | None:
            services = (await (await client.get("/services")).json())["services"]
            view = {s["name"]: s for s in services}.get("dead")
            return None if view is None else (view["registry_healthy"], view["eligible"])

        await eventually(dead_view, (False, False), 5)

    # The registry dies: the last view stays, no error reaches clients.
    reg_proc.kill()
    await eventually(registry_up, 0.0, 5)
    assert await names() == ["e1", "st"]
    served = set()
    for _ in range(4):
        resp = await client.post("/v1/chat/completions", json=BODY)
        assert resp.status == 200
        served.add(resp.headers["X-Llmsvc-Backend"])
    assert served == {"e1", "st"}


async def test_unreadable_registry_answers_keep_the_last_view(
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    """A registry (here a stand-in) that starts answering garbage: the view stays."""
    record = {"name": "e1", "host": HOST, "port": 1, "metadata": {"models": ["m"]}}
    answer: dict[str, Any] = {
        "body": orjson.dumps({"services": [record], "total": 1}),
        "index": "1",
    }

    async def services(_: web.Request) -> web.Response:
        await asyncio.sleep(0.05)  # answers "at once" but not instantly
        headers = {"X-Llmsvc-Index": answer["index"], "Content-Type": "application/json"}
        return web.Response(body=answer["body"], headers=headers)

    app = web.Application()
    app.router.add_get("/services", services)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, HOST, port).start()
    try:
        # No restart grace: the empty answer after the outage applies at once.
        settings = RouterSettings(
            registry_url=f"http://{HOST}:{port}",
            registry_sync_interval=0.1,
            health_interval=60,
            registry_restart_grace=0,
        )
        client = await aiohttp_client(create_app(settings, registry=CollectorRegistry()))

        async def view() -> tuple[int, float]:
            text = await (await client.get("/metrics")).text()
            up = metrics.value(text, "llmsvc_router_registry_up")
            return (await (await client.get("/health")).json())["backends"], up

        await eventually(view, (1, 1.0), 5)
        answer["body"] = b'{"services": [{"name": "no host"}]}'
        answer["index"] = "2"
        await eventually(view, (1, 0.0), 5)
        answer["body"] = b'{"services": [1, 2'
        await asyncio.sleep(0.3)
        assert await view() == (1, 0.0)
        answer["body"], answer["index"] = orjson.dumps({"services": [], "total": 0}), "3"
        await eventually(view, (0, 1.0), 5)
    finally:
        await runner.cleanup()
