"""The simulated engine's sleep mode (vLLM's /sleep, /wake_up, /is_sleeping), in process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from llmsvc.simengine.app import create_app
from llmsvc.simengine.settings import SimEngineSettings
from llmsvc.simengine.state import SIMENGINE

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]

BODY = {"model": "sim-model", "prompt": "a prompt long enough to fill a block " * 4}


@pytest.fixture
def make_client(aiohttp_client: Any) -> MakeClient:
    async def make(**overrides: Any) -> Client:
        settings = SimEngineSettings(**{"time_scale": 0.0, **overrides})
        client: Client = await aiohttp_client(create_app(settings, registry=CollectorRegistry()))
        return client

    return make


async def sleeping(client: Client) -> bool:
    resp = await client.get("/is_sleeping")
    assert resp.status == 200
    body = await resp.json()
    return bool(body["is_sleeping"])


async def test_sleep_refuses_service_until_woken(make_client: MakeClient) -> None:
    client = await make_client()
    assert not await sleeping(client)
    assert (await client.post("/sleep?level=1")).status == 200
    assert await sleeping(client)
    health = await client.get("/health")
    assert health.status == 503
    assert (await health.json())["error"]["code"] == "engine_sleeping"
    for path in ("/v1/completions", "/completions"):
        resp = await client.post(path, json=BODY)
        assert resp.status == 503
        error = (await resp.json())["error"]
        assert error["code"] == "engine_sleeping"
        assert set(error) == {"message", "type", "param", "code"}
    assert (await client.get("/metrics")).status == 200
    assert (await client.post("/wake_up")).status == 200
    assert not await sleeping(client)
    assert (await client.get("/health")).status == 200
    assert (await client.post("/v1/completions", json=BODY)).status == 200


@pytest.mark.parametrize("level", ["0", "3", "x"])
async def test_sleep_level_must_be_one_or_two(make_client: MakeClient, level: str) -> None:
    client = await make_client()
    resp = await client.post(f"/sleep?level={level}")
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == "level"
    assert not await sleeping(client)


async def test_sleep_level_two_and_default_level(make_client: MakeClient) -> None:
    client = await make_client()
    assert (await client.post("/sleep?level=2")).status == 200
    assert await sleeping(client)
    assert (await client.post("/wake_up")).status == 200
    assert (await client.post("/sleep")).status == 200
    assert await sleeping(client)


async def test_wake_up_takes_the_wake_delay_times_the_time_scale(
    make_client: MakeClient,
) -> None:
    client = await make_client(time_scale=0.5, wake_delay=0.6)  # 0.3 s
    assert (await client.post("/wake_up")).status == 200  # awake already: at once
    assert (await client.post("/sleep")).status == 200
    started = time.monotonic()
    first, second = await asyncio.gather(client.post("/wake_up"), client.post("/wake_up"))
    elapsed = time.monotonic() - started
    assert first.status == second.status == 200
    assert 0.25 <= elapsed < 5.0
    assert not await sleeping(client)


async def test_sleep_while_waking_is_refused(make_client: MakeClient) -> None:
    client = await make_client(time_scale=1.0, wake_delay=0.3)
    assert (await client.post("/sleep")).status == 200
    waking = asyncio.ensure_future(client.post("/wake_up"))
    await asyncio.sleep(0.05)
    resp = await client.post("/sleep")
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "engine_waking"
    assert (await waking).status == 200


async def test_sleep_with_a_request_running_is_refused(make_client: MakeClient) -> None:
    client = await make_client(time_scale=1.0, decode_tokens_per_s=20.0)
    running = asyncio.ensure_future(client.post("/v1/completions", json={**BODY, "max_tokens": 10}))
    engine = client.app[SIMENGINE].engine
    for _ in range(200):
        if engine.scheduler.running:
            break
        await asyncio.sleep(0.01)
    assert engine.scheduler.running == 1
    resp = await client.post("/sleep")
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "engine_busy"
    assert (await running).status == 200
    assert not await sleeping(client)


async def test_sleep_empties_the_prefix_cache(make_client: MakeClient) -> None:
    client = await make_client()
    assert (await client.post("/v1/completions", json=BODY)).status == 200
    engine = client.app[SIMENGINE].engine
    assert len(engine.prefix_cache) > 0
    assert (await client.post("/sleep")).status == 200
    assert len(engine.prefix_cache) == 0
    assert (await client.post("/wake_up")).status == 200
    assert (await client.post("/v1/completions", json=BODY)).status == 200
    text = await (await client.get("/metrics")).text()
    hits = {
        s.name: s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "vllm:prefix_cache_hits_total"
    }
    assert hits["vllm:prefix_cache_hits_total"] == 0  # the second run found nothing cached


def test_a_profile_may_set_the_wake_delay(tmp_path: Any) -> None:
    profile = tmp_path / "p.json"
    profile.write_text('{"settings": {"wake_delay": 7.5}}')
    assert SimEngineSettings(profile=str(profile)).wake_delay == 7.5
    assert SimEngineSettings(profile=str(profile), wake_delay=1).wake_delay == 1
    assert SimEngineSettings().wake_delay == 0.5
