"""The babysitter's API in process (``aiohttp_client``) with a real engine still loading."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from llmsvc.babysitter.app import create_app
from llmsvc.babysitter.settings import BabysitterSettings
from procs import free_port, pid_alive

Client = Callable[..., Awaitable[TestClient[Any, Any]]]


async def test_api_while_the_engine_loads(aiohttp_client: Client) -> None:
    settings = BabysitterSettings(
        engine="sim", model="/m/slow", port=free_port(pair=True), health_interval=0.2,
        stop_timeout=5,
    )  # fmt: skip
    app = create_app(settings, engine_args=["--startup-delay", "100"], registry=CollectorRegistry())
    client = await aiohttp_client(app)
    for _ in range(100):
        status = await (await client.get("/status")).json()
        if status["pid"]:
            break
        await asyncio.sleep(0.05)
    assert status["state"] == "starting"
    assert (status["model"], status["model_name"], status["engine"]) == ("/m/slow", "slow", "sim")
    assert status["registered"] == {"engine": False, "babysitter": False}
    assert status["registration"] == {"engine": "off", "babysitter": "off"}  # no --registry
    assert status["last_exit"] is None and status["restarts"] == 0
    pid = status["pid"]

    resp = await client.get("/health")
    assert resp.status == 503
    assert (await resp.json())["error"]["type"] == "service_unavailable_error"
    assert (await client.get("/models")).status == 503
    missing = await client.get("/nope")
    assert missing.status == 404
    assert set((await missing.json())["error"]) == {"message", "type", "param", "code"}
    assert (await client.get("/restart")).status == 405
    paths = (await (await client.get("/openapi.json")).json())["paths"]
    assert {"/health", "/status", "/models", "/restart", "/drain", "/model", "/metrics"} <= set(
        paths
    )
    metrics = await (await client.get("/metrics")).text()
    assert 'llmsvc_babysitter_state{model_name="slow",state="starting"} 1.0' in metrics

    await client.close()  # the app's cleanup stops the engine
    assert not pid_alive(pid) or await _gone(pid)


async def _gone(pid: int) -> bool:
    for _ in range(50):
        if not pid_alive(pid):
            return True
        await asyncio.sleep(0.1)
    os.kill(pid, 9)
    return False
