"""``GET /demand`` and the demand gauges: every known model (0 included), what is in
flight, queued by class and held; the admin token guards it like ``/stats``.

In process, against stand-in engines on real sockets: a streaming stand-in holds its
slot until the test lets it go, so the counts are read while they stand still.
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
from prometheus_client import CollectorRegistry

import metrics
from llmsvc.router.app import create_app
from llmsvc.router.demand import DemandCounter, ModelDemand, demand_view
from llmsvc.router.settings import RouterSettings
from procs import HOST, free_port
from routerbackends import BODY, CHAT, Backend, Client, running

STREAM = {**BODY, "stream": True}
ADMIN = "admin-secret"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


async def demand_of(client: Client) -> dict[str, Any]:
    resp = await client.get("/demand", headers=AUTH)
    assert resp.status == 200, await resp.text()
    result: dict[str, Any] = await resp.json()
    return result


def test_demand_view_lists_every_model_with_its_total() -> None:
    counter = DemandCounter()
    counter.add(counter.in_flight, "a", 2)
    counter.add(counter.held, "b", 1)
    queued = {"a": {"critical": 1, "standard": 4, "sheddable": 0, "batch": 0}}
    zero = dict.fromkeys(("critical", "standard", "sheddable", "batch"), 0)
    snapshot = counter.snapshot(["a", "b", "c"], lambda m: queued.get(m, zero))
    assert snapshot["a"] == ModelDemand(in_flight=2, queued=queued["a"], held=0)
    assert snapshot["a"].total == 7 and snapshot["b"].total == 1 and snapshot["c"].total == 0
    view = demand_view(snapshot)
    assert view["total"] == 8
    assert view["models"]["a"] == {
        "in_flight": 2, "queued": 5, "queued_by_priority": queued["a"], "held": 0, "demand": 7,
        "kv_cache_usage": None, "ready": 0,
    }  # fmt: skip
    counter.add(counter.in_flight, "a", -2)
    assert "a" not in counter.in_flight  # no leftover zero entries


async def router_with(
    aiohttp_client: Callable[..., Awaitable[Client]], tmp_path: Path, records: list[Any]
) -> Client:
    path = tmp_path / "services.json"
    path.write_bytes(orjson.dumps(records))
    settings = RouterSettings(static_services=str(path), admin_token=ADMIN, health_interval=0.2)
    return await aiohttp_client(create_app(settings, registry=CollectorRegistry()))


async def until(client: Client, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while not check(seen := await demand_of(client)):
        assert time.monotonic() < deadline, seen
        await asyncio.sleep(0.02)
    return seen


async def test_demand_counts_in_flight_queued_by_class_and_held(
    aiohttp_client: Callable[..., Awaitable[Client]], tmp_path: Path
) -> None:
    slow = Backend("slow", mode="stream")  # holds its slot until ``go``
    down = Backend("down", healthy=False)
    async with running(slow, down):
        records = [
            slow.record() | {"metadata": {"models": ["m"], "max_concurrency": 1}},
            down.record() | {"metadata": {"models": ["cold"]}},
        ]
        client = await router_with(aiohttp_client, tmp_path, records)
        assert (await client.get("/demand")).status == 401  # the admin token's, like /stats
        zero = dict.fromkeys(("critical", "standard", "sheddable", "batch"), 0)
        idle = await demand_of(client)
        assert idle["models"]["m"].pop("ready") == 1  # cold's may not have failed a check yet
        assert idle["models"]["cold"].pop("ready") in (0, 1)
        assert idle == {
            "models": {
                m: {"in_flight": 0, "queued": 0, "queued_by_priority": zero, "held": 0,
                    "demand": 0, "kv_cache_usage": None}  # no scrape: round_robin
                for m in ("cold", "m")
            },
            "total": 0,
        }  # fmt: skip

        first = await client.post(CHAT, json=STREAM)  # takes m's one slot
        assert first.status == 200

        def post(priority: str) -> asyncio.Task[Any]:
            headers = {"X-Llmsvc-Priority": priority}
            return asyncio.create_task(client.post(CHAT, json=BODY, headers=headers))

        batch, critical = post("batch"), post("critical")
        held = asyncio.create_task(client.post(CHAT, json={**BODY, "model": "cold"}))
        seen = await until(
            client, lambda d: d["models"]["m"]["queued"] == 2 and d["models"]["cold"]["held"] == 1
        )
        m = seen["models"]["m"]
        assert (m["in_flight"], m["demand"]) == (1, 3)
        assert m["queued_by_priority"] == zero | {"critical": 1, "batch": 1}
        assert seen["models"]["cold"] == {
            "in_flight": 0, "queued": 0, "queued_by_priority": zero, "held": 1, "demand": 1,
            "kv_cache_usage": None, "ready": 0,
        }  # fmt: skip
        assert seen["total"] == 4

        text = await (await client.get("/metrics", headers=AUTH)).text()
        assert metrics.value(text, 'llmsvc_router_model_demand{model_name="m"}') == 3
        assert metrics.value(text, 'llmsvc_router_held_requests{model_name="cold"}') == 1
        series = 'llmsvc_router_queue_requests{model_name="m",priority="%s"}'
        assert metrics.value(text, series % "critical") == 1
        assert metrics.value(text, series % "batch") == 1

        slow.go.set()  # the stream ends: its slot goes to the queued ones
        await first.read()
        assert (await critical).status == 200 and (await batch).status == 200
        down.healthy = True  # cold's backend passes its next check: the held one goes
        assert (await asyncio.wait_for(held, 10)).status == 200
        assert (await until(client, lambda d: d["total"] == 0))["models"]["m"]["in_flight"] == 0


def exposition(body: bytes) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def metrics_page(_: web.Request) -> web.Response:
        return web.Response(body=body)

    return metrics_page


async def test_demand_says_each_models_ready_backends_and_their_kv_cache_use(
    aiohttp_client: Callable[..., Awaitable[Client]], tmp_path: Path
) -> None:
    """What an autoscaler's kvCache metric reads: the mean scraped KV-cache use of the
    model's ready backends (least_load scrapes them); an engine exporting none is left out,
    and a model with no scrape reads null."""
    exports = {
        "e1": b"vllm:num_requests_waiting 0\nvllm:kv_cache_usage_perc 0.2\n",
        "e2": b"vllm:num_requests_waiting 1\nvllm:kv_cache_usage_perc 0.6\n",
        "e3": b"vllm:num_requests_waiting 0\n",  # no KV-cache series
    }
    engines = {name: Backend(name) for name in exports}
    cold = Backend("cold", healthy=False)
    runners = []
    for name, backend in [*engines.items(), ("cold", cold)]:
        app = web.Application()
        app.router.add_get("/health", backend.health)
        app.router.add_get("/metrics", exposition(exports.get(name, b"")))
        runner = web.AppRunner(app)
        await runner.setup()
        backend.port = free_port()
        await web.TCPSite(runner, HOST, backend.port).start()
        runners.append(runner)
    try:
        path = tmp_path / "services.json"
        records = [b.record() for b in engines.values()]
        records.append(cold.record() | {"metadata": {"models": ["cold"]}})
        path.write_bytes(orjson.dumps(records))
        settings = RouterSettings(
            static_services=str(path), admin_token=ADMIN, health_interval=0.2,
            strategy="least_load", load_scrape_interval=0.1,
        )  # fmt: skip
        client = await aiohttp_client(create_app(settings, registry=CollectorRegistry()))
        # Every engine scraped once (each scrape lands on its own) and cold's check failed.
        seen = await until(
            client,
            lambda d: (
                d["models"]["m"]["kv_cache_usage"] == pytest.approx(0.4)
                and d["models"]["cold"]["ready"] == 0
            ),
        )
        assert seen["models"]["m"]["ready"] == 3
        assert seen["models"]["cold"]["kv_cache_usage"] is None
    finally:
        for runner in runners:
            await runner.cleanup()
