"""Draining with flow control: SIGTERM to a real router process with queued and held
requests. Queued requests still run within ``--shutdown-timeout``; what still waits
shortly before its end is answered 503 ``draining`` with ``Retry-After``; a request
that reaches a draining router is refused the same way."""

from __future__ import annotations

import asyncio
import functools
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson

from procs import HOST, Proc, Spawn, free_port, start_router, start_sim_engine
from routerbackends import BODY, CHAT, Backend, running, static_router


def router_with(
    spawn: Spawn, tmp_path: Path, record: dict[str, Any], *flags: str
) -> tuple[Proc, str]:
    services = tmp_path / "services.json"
    services.write_bytes(orjson.dumps([record]))
    return start_router(spawn, None, "--static-services", str(services), *flags)


def body(tokens: int) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": tokens}


async def wait_demand(client: httpx.AsyncClient, key: str, value: int) -> None:
    deadline = time.monotonic() + 10
    while (seen := (await client.get("/demand")).json()["models"]["m"])[key] != value:
        assert time.monotonic() < deadline, seen
        await asyncio.sleep(0.05)


def test_queued_requests_run_within_the_drain(spawn: Spawn, tmp_path: Path) -> None:
    _, port = start_sim_engine(
        spawn, "e1", "--time-scale", "1", "--decode-tokens-per-s", "10",
        "--prefill-overhead-s", "0",
    )  # fmt: skip
    record = {"name": "e1", "host": HOST, "port": port,
              "metadata": {"models": ["m"], "max_concurrency": 1}}  # fmt: skip
    router, url = router_with(spawn, tmp_path, record, "--shutdown-timeout", "10")

    async def scenario() -> list[int]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            tasks = [asyncio.create_task(client.post(CHAT, json=body(8)))]
            await wait_demand(client, "in_flight", 1)
            tasks += [asyncio.create_task(client.post(CHAT, json=body(4))) for _ in range(2)]
            await wait_demand(client, "queued", 2)
            router.signal(signal.SIGTERM)
            return [(await t).status_code for t in tasks]

    assert asyncio.run(scenario()) == [200, 200, 200]
    assert router.popen.wait(15) == 0
    assert "Traceback" not in router.log()


def test_what_still_waits_at_the_drains_end_is_503_draining(spawn: Spawn, tmp_path: Path) -> None:
    """A held request (its model's only backend never comes up) and a queued one (behind
    a request that outlasts the drain) both get 503 draining before the process ends."""
    dead = {"name": "dead", "host": HOST, "port": free_port(), "metadata": {"models": ["m"]}}
    router, url = router_with(
        spawn, tmp_path, dead, "--shutdown-timeout", "3", "--hold-timeout", "60"
    )

    async def scenario() -> tuple[httpx.Response, float]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            held = asyncio.create_task(client.post(CHAT, json=body(4)))
            await wait_demand(client, "held", 1)
            router.signal(signal.SIGTERM)
            sent = time.monotonic()
            resp = await held
            return resp, time.monotonic() - sent

    resp, took = asyncio.run(scenario())
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"]["code"] == "draining"
    assert int(resp.headers["Retry-After"]) >= 1
    assert took < 5  # before the drain's end (1 s linger + 3 s), not the 60 s hold
    assert router.popen.wait(10) == 0


def test_a_queued_request_behind_a_long_one_is_503_draining(spawn: Spawn, tmp_path: Path) -> None:
    _, port = start_sim_engine(
        spawn, "e1", "--time-scale", "1", "--decode-tokens-per-s", "10",
        "--prefill-overhead-s", "0",
    )  # fmt: skip
    record = {"name": "e1", "host": HOST, "port": port,
              "metadata": {"models": ["m"], "max_concurrency": 1}}  # fmt: skip
    router, url = router_with(spawn, tmp_path, record, "--shutdown-timeout", "2")

    async def scenario() -> httpx.Response:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            long = asyncio.create_task(client.post(CHAT, json=body(100)))  # ~10 s
            await wait_demand(client, "in_flight", 1)
            queued = asyncio.create_task(client.post(CHAT, json=body(2)))
            await wait_demand(client, "queued", 1)
            router.signal(signal.SIGTERM)
            resp = await queued
            long.cancel()
            return resp

    resp = asyncio.run(scenario())
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "draining"
    assert "Retry-After" in resp.headers
    assert router.popen.wait(10) == 0


async def test_a_draining_router_admits_nothing_new(
    aiohttp_client: Callable[..., Awaitable[Any]], tmp_path: Path
) -> None:
    from llmsvc.router.app import ROUTER

    b = Backend("b")
    async with running(b):
        client = await functools.partial(static_router, aiohttp_client, tmp_path)([b])
        assert (await client.post(CHAT, json=BODY)).status == 200
        client.app[ROUTER].flow.drain(30)  # what on_shutdown does on SIGTERM
        resp = await client.post(CHAT, json=BODY)
        assert resp.status == 503
        error = (await resp.json())["error"]
        assert (error["code"], error["type"]) == ("draining", "service_unavailable_error")
        assert int(resp.headers["Retry-After"]) >= 1
        assert b.hits == 1
