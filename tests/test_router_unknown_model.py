"""Unknown models against known ones with a real registry: 404 ``model_not_found`` only for
a model no record lists in any state and no babysitter names; 503 for a known one that has
nothing healthy (an unhealthy record, a babysitter whose engine is not up yet)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

import metrics
from llmsvc.core.records import ServiceRecord
from llmsvc.router.app import create_app
from llmsvc.router.backends import BackendPool
from llmsvc.router.outliers import OutlierRules
from llmsvc.router.settings import RouterSettings
from procs import HOST, Spawn, free_port, start_registry

Client = TestClient[web.Request, web.Application]
CHAT = "/v1/chat/completions"


def body(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


async def registry_statuses(registry: str) -> dict[str, str]:
    async with httpx.AsyncClient(base_url=registry) as reg:
        services = (await reg.get("/services")).json()["services"]
    return {s["name"]: s["status"] for s in services}


async def wait_for(probe: Callable[[], Awaitable[bool]], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not await probe():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_unknown_is_404_known_but_down_is_503(
    spawn: Spawn, aiohttp_client: Callable[..., Awaitable[Client]]
) -> None:
    _, registry = start_registry(spawn)
    port = free_port()
    engine = spawn(
        "e1", "sim-engine", "--port", str(port), "--model-name", "up", "--time-scale", "0"
    )  # fmt: skip
    engine.wait_http(f"http://{HOST}:{port}/health")
    async with httpx.AsyncClient(base_url=registry) as reg:
        records = [
            {"name": "e1", "host": HOST, "port": port, "metadata": {"models": ["up"]}},
            # Nothing listens there: the registry's health check marks it unhealthy.
            {"name": "dead", "host": HOST, "port": free_port(), "metadata": {"models": ["down"]}},
            # A babysitter whose engine is still loading (its engine has no record yet).
            {
                "name": "e2-babysitter",
                "host": HOST,
                "port": free_port(),
                "type": "babysitter",
                "metadata": {"engine": "vllm", "model_name": "loading"},
            },
        ]
        for record in records:
            assert (await reg.post("/services", json=record)).status_code == 201

    async def dead_is_unhealthy() -> bool:
        return (await registry_statuses(registry)).get("dead") == "unhealthy"

    await wait_for(dead_is_unhealthy, "the registry to mark 'dead' unhealthy")
    # No hold (--hold-timeout 0): a known model with nothing healthy is a 503 at once.
    settings = RouterSettings(registry_url=registry, health_interval=60, hold_timeout=0)
    client = await aiohttp_client(create_app(settings, registry=CollectorRegistry()))

    async def listed() -> bool:
        data = (await (await client.get("/v1/models")).json())["data"]
        return [m["id"] for m in data] == ["down", "loading", "up"]

    await wait_for(listed, "/v1/models to list every known model")
    assert (await client.post(CHAT, json=body("up"))).status == 200
    for model in ("down", "loading"):
        resp = await client.post(CHAT, json=body(model))
        assert resp.status == 503, model
        error = (await resp.json())["error"]
        assert error["message"] == f"No healthy services available for model '{model}'"
        assert error["type"] == "service_unavailable_error"
    resp = await client.post(CHAT, json=body("nope"))
    assert resp.status == 404
    assert "X-Llmsvc-Backend" not in resp.headers
    assert await resp.json() == {
        "error": {
            "message": "The model `nope` does not exist or you do not have access to it.",
            "type": "invalid_request_error",
            "param": None,
            "code": "model_not_found",
        }
    }
    text = await (await client.get("/metrics")).text()
    series = 'llmsvc_router_requests_total{backend="_none",model_name="%s",status="%d"}'
    assert metrics.value(text, series % ("_unknown", 404)) == 1
    assert metrics.value(text, series % ("down", 503)) == 1
    assert metrics.value(text, series % ("loading", 503)) == 1


def record(name: str, model: str, **extra: object) -> ServiceRecord:
    base = {"name": name, "host": HOST, "port": 1, "metadata": {"models": [model]}}
    return ServiceRecord.model_validate(base | extra)


def test_a_model_is_known_in_every_state_of_its_backends() -> None:
    """Known (503, listed) whether its backend is healthy, unhealthy by the registry, failing
    the router's check, taken out after failures or ejected as an outlier; or named by a
    babysitter only. Nothing else is (404)."""
    pool = BackendPool(max_fails=1, fail_timeout=30.0)
    pool.set_static([record("static", "s")])
    sitter = {"type": "babysitter", "metadata": {"engine": "vllm", "model_name": "loading"}}
    pool.set_registry(
        [
            record("up", "u"),
            record("unhealthy", "h", status="unhealthy"),
            record("checked", "c"),
            record("passive", "p"),
            record("outlier", "o"),
            ServiceRecord.model_validate({"name": "b", "host": HOST, "port": 2} | sitter),
        ]
    )
    now = 1.0
    backends = {b.name: b for b in pool}
    backends["checked"].record_check(False, now)
    assert backends["passive"].passive.record_failure(now)
    rules = OutlierRules(
        consecutive_failures=5, latency_factor=5.0, ejection_time=30.0, max_ejection_percent=50
    )
    backends["outlier"].outlier.eject(now, rules, "consecutive_failures")
    pool.health_changed()
    for model in ("h", "c", "p", "o", "loading"):
        assert pool.knows(model), model
        assert not pool.eligible(model, now + 1).backends, model  # nothing healthy: 503
    assert [b.name for b in pool.eligible("u", now + 1)] == ["up"]
    assert pool.knows("s") and pool.knows("u")
    assert not pool.knows("nope") and not pool.knows("vllm")
    assert pool.known_models() == ["c", "h", "loading", "o", "p", "s", "u"]
    assert sorted(pool.healthy_models(now + 1)) == ["s", "u"]
