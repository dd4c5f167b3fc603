"""The blocking query of ``GET /services`` (in process, real sockets)."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

import metrics
from llmsvc.core.registry_client import RegistryClient
from llmsvc.registry.app import create_app
from llmsvc.registry.queries import MAX_WAIT, parse_duration
from llmsvc.registry.settings import RegistrySettings

SERVICE = {"name": "engine-a", "host": "127.0.0.1", "port": 8000}


@pytest.fixture
async def client(aiohttp_client: Any) -> TestClient[Any, Any]:
    settings = RegistrySettings(
        health_interval=60, cleanup_interval=60, allow_anonymous_writes=True
    )
    app = create_app(settings, registry=CollectorRegistry())
    result: TestClient[Any, Any] = await aiohttp_client(app)
    return result


async def parked(client: TestClient[Any, Any], count: int, timeout: float = 5.0) -> None:
    """Wait until ``count`` blocking queries wait in the registry (its own gauge says so)."""
    deadline = time.monotonic() + timeout
    while True:
        text = await (await client.get("/metrics")).text()
        now = metrics.value(text, "llmsvc_registry_blocking_queries")
        if now == count:
            return
        assert time.monotonic() < deadline, f"{now} blocking queries waiting, not {count}"
        await asyncio.sleep(0.01)


async def current_index(client: TestClient[Any, Any]) -> int:
    resp = await client.get("/services")
    return int(resp.headers["X-Llmsvc-Index"])


async def test_returns_early_on_change(client: TestClient[Any, Any]) -> None:
    index = await current_index(client)
    started = time.monotonic()
    watch = asyncio.create_task(client.get(f"/services?index={index}&wait=10s"))
    await parked(client, 1)
    assert not watch.done()
    await client.post("/services", json=SERVICE)
    resp = await asyncio.wait_for(watch, 5)
    assert time.monotonic() - started < 3
    assert resp.status == 200
    assert int(resp.headers["X-Llmsvc-Index"]) > index
    body = await resp.json()
    assert [s["name"] for s in body["services"]] == ["engine-a"]


async def test_times_out_at_wait_with_current_records(client: TestClient[Any, Any]) -> None:
    await client.post("/services", json=SERVICE)
    index = await current_index(client)
    started = time.monotonic()
    resp = await client.get(f"/services?index={index}&wait=300ms")
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 2
    assert int(resp.headers["X-Llmsvc-Index"]) == index
    assert (await resp.json())["total"] == 1


async def test_heartbeat_does_not_wake_watchers(client: TestClient[Any, Any]) -> None:
    lease = (await (await client.post("/services", json=SERVICE)).json())["lease"]
    index = await current_index(client)
    watch = asyncio.create_task(client.get(f"/services?index={index}&wait=0.5"))
    await parked(client, 1)
    resp = await client.post("/services/engine-a/heartbeat", headers={"X-Llmsvc-Lease": lease})
    assert resp.status == 200
    await asyncio.sleep(0.1)
    assert not watch.done()
    await asyncio.wait_for(watch, 5)


async def test_stale_or_future_index_answers_at_once(client: TestClient[Any, Any]) -> None:
    await client.post("/services", json=SERVICE)
    index = await current_index(client)
    started = time.monotonic()
    behind = await client.get(f"/services?index={index - 1}&wait=10s")
    ahead = await client.get(f"/services?index={index + 1}&wait=10s")
    assert time.monotonic() - started < 2
    assert behind.headers["X-Llmsvc-Index"] == ahead.headers["X-Llmsvc-Index"] == str(index)


async def test_index_never_repeats_across_restarts(aiohttp_client: Any) -> None:
    settings = RegistrySettings(
        health_interval=60, cleanup_interval=60, allow_anonymous_writes=True
    )
    first = await aiohttp_client(create_app(settings, registry=CollectorRegistry()))
    await first.post("/services", json=SERVICE)
    old = await current_index(first)
    await first.close()
    await asyncio.sleep(0.01)
    second = await aiohttp_client(create_app(settings, registry=CollectorRegistry()))
    assert await current_index(second) > old


async def test_filters_apply_to_the_answer(client: TestClient[Any, Any]) -> None:
    index = await current_index(client)
    watch = asyncio.create_task(client.get(f"/services?index={index}&wait=10&type=babysitter"))
    await parked(client, 1)
    await client.post("/services", json=SERVICE)
    resp = await asyncio.wait_for(watch, 5)
    assert (await resp.json()) == {"services": [], "total": 0}


async def test_many_concurrent_watchers(client: TestClient[Any, Any]) -> None:
    index = await current_index(client)
    watches = [
        asyncio.create_task(client.get(f"/services?index={index}&wait=20s")) for _ in range(50)
    ]
    await parked(client, 50)
    assert not any(w.done() for w in watches)
    await client.post("/services", json=SERVICE)
    answers = await asyncio.wait_for(asyncio.gather(*watches), 5)
    assert {r.status for r in answers} == {200}


async def test_registry_client_round_trip(client: TestClient[Any, Any]) -> None:
    registry = RegistryClient(base_url=str(client.make_url("")), session=client.session)
    records, index = await registry.services()
    assert records == []
    watch = asyncio.create_task(registry.services(index=index, wait=10, model="m"))
    await parked(client, 1)
    resp = await client.post("/services", json={**SERVICE, "metadata": {"models": ["m"]}})
    lease = (await resp.json())["lease"]
    records, new_index = await asyncio.wait_for(watch, 5)
    assert [r.name for r in records] == ["engine-a"]
    assert new_index > index
    assert await registry.heartbeat("engine-a", lease=lease) is True
    await registry.deregister("engine-a", lease=lease)
    assert await registry.heartbeat("engine-a", lease=lease) is False


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30.0), ("1m", 60.0), ("2.5", 2.5), ("0", 0.0), ("10m", MAX_WAIT)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "-1", "1h", "1 m", "abc", "1e3"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(text)}$"):
        parse_duration(text)
