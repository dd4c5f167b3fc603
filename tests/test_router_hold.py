"""Holding a request for a known model with no ready backend (``--hold-timeout``).

Real processes: a babysitter whose simulated engine takes 5 s to start; a request
sent at once, plain or streaming (through the ``openai`` client, unmodified), is
held and then answered. A hold past its timeout: a plain request gets 503
``no_healthy_backend`` with the seed's message and ``Retry-After``, a stream its
comment lines and then an in-band error event, no ``[DONE]``. In process: the
default hold waits for a backend's health check to pass, and a hold wakes on the
pool's change event or when a take-out ends by itself.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from llmsvc.core.errors import ModelNotFound
from llmsvc.core.records import ServiceRecord
from llmsvc.router.backends import BackendPool
from llmsvc.router.demand import DemandCounter
from llmsvc.router.hold import Holds, NoHealthyBackend
from procs import HOST, Spawn, free_port, start_babysitter, start_registry, start_router
from routerbackends import BODY, CHAT, Backend, MakeRouter, running, static_router

MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]


@pytest.fixture
def make_router(aiohttp_client: Callable[..., Awaitable[Any]], tmp_path: Path) -> MakeRouter:
    return functools.partial(static_router, aiohttp_client, tmp_path)


def wait_known(router: str, model: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        data = httpx.get(f"{router}/v1/models", timeout=5).json()["data"]
        if model in [m["id"] for m in data]:
            return
        assert time.monotonic() < deadline, f"{model} never became known"
        time.sleep(0.1)


async def stream_lines(client: httpx.AsyncClient) -> tuple[httpx.Response, list[str]]:
    body = {"model": "m", "messages": MESSAGES, "max_tokens": 4, "stream": True}
    async with client.stream("POST", CHAT, json=body, timeout=30) as resp:
        lines = [line async for line in resp.aiter_lines() if line]
    return resp, lines


def test_held_through_an_engine_start_plain_and_streaming(spawn: Spawn) -> None:
    _, registry = start_registry(spawn)
    _, router = start_router(
        spawn, registry, "--hold-timeout", "20", "--hold-feedback-interval", "0.5"
    )
    start_babysitter(
        spawn, registry, "cold", model="m", wait=False,
        engine_args=("--time-scale", "0", "--startup-delay", "5"),
    )  # fmt: skip
    wait_known(router, "m")  # the babysitter names it; its engine is still loading
    assert httpx.get(f"{router}/health", timeout=5).json()["healthy_backends"] == 0

    def official() -> list[Any]:
        """The official client, unmodified, reading a held stream."""
        client = openai.OpenAI(base_url=f"{router}/v1", api_key="none", max_retries=0)
        stream = client.chat.completions.create(
            model="m", messages=MESSAGES, max_tokens=4, stream=True
        )
        return list(stream)

    async def requests() -> tuple[
        httpx.Response, httpx.Response, list[str], list[Any], dict[str, Any]
    ]:
        async with httpx.AsyncClient(base_url=router) as client:
            body = {"model": "m", "messages": MESSAGES, "max_tokens": 4}
            plain = asyncio.create_task(client.post(CHAT, json=body, timeout=30))
            stream = asyncio.create_task(stream_lines(client))
            chunks = asyncio.create_task(asyncio.to_thread(official))
            deadline = time.monotonic() + 10
            while (demand := (await client.get("/demand")).json())["models"]["m"]["held"] < 3:
                assert time.monotonic() < deadline, demand
                await asyncio.sleep(0.05)
            resp, lines = await stream
            return await plain, resp, lines, await chunks, demand

    plain, streamed, lines, chunks, demand = asyncio.run(requests())
    assert demand["models"]["m"] | {"queued_by_priority": None} == {
        "in_flight": 0, "queued": 0, "queued_by_priority": None, "held": 3, "demand": 3,
        "kv_cache_usage": None, "ready": 0,
    }  # fmt: skip
    assert plain.status_code == 200, plain.text
    assert plain.json()["choices"][0]["message"]["content"]
    assert streamed.status_code == 200
    assert streamed.headers["Content-Type"].startswith("text/event-stream")
    comments = [line for line in lines if line.startswith(":")]
    assert comments and comments[0].startswith(": waiting for m: ")
    assert lines[-1] == "data: [DONE]" and any(line.startswith("data: {") for line in lines)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_a_hold_past_its_timeout_ends_as_specified(spawn: Spawn, tmp_path: Path) -> None:
    """A known model that never gets a ready backend: a 503 after the hold, or for a stream
    comment lines and an in-band error event with no [DONE]."""
    services = tmp_path / "services.json"
    dead = {"name": "dead", "host": HOST, "port": free_port(), "metadata": {"models": ["m"]}}
    services.write_bytes(orjson.dumps([dead]))
    _, router = start_router(
        spawn, None, "--static-services", str(services), "--hold-timeout", "1.5",
        "--hold-feedback-interval", "0.3",
    )  # fmt: skip
    started = time.monotonic()
    body = {"model": "m", "messages": MESSAGES, "max_tokens": 4}
    plain = httpx.post(f"{router}{CHAT}", json=body, timeout=30)
    assert time.monotonic() - started >= 1.4  # held, not answered at once
    assert plain.status_code == 503
    error = plain.json()["error"]
    assert error["message"] == "No healthy services available for model 'm'"
    assert (error["code"], error["type"]) == ("no_healthy_backend", "service_unavailable_error")
    assert int(plain.headers["Retry-After"]) >= 1

    async def stream() -> tuple[httpx.Response, list[str]]:
        async with httpx.AsyncClient(base_url=router) as client:
            return await stream_lines(client)

    resp, lines = asyncio.run(stream())
    assert resp.status_code == 200
    comments = [line for line in lines if line.startswith(":")]
    assert len(comments) >= 3 and comments[0] == ": waiting for m: 0 ahead"
    assert "data: [DONE]" not in lines
    last = orjson.loads(lines[-1].removeprefix("data: "))
    assert last["error"]["code"] == "no_healthy_backend"
    assert last["error"]["message"] == "No healthy services available for model 'm'"

    client = openai.OpenAI(base_url=f"{router}/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.APIError, match="No healthy services available for model 'm'"):
        list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))


async def test_the_default_hold_waits_for_a_backend_to_pass_its_check(
    make_router: MakeRouter,
) -> None:
    down = Backend("b", healthy=False)
    async with running(down):
        client = await make_router([down], health_interval=0.2)  # the default --hold-timeout
        request = asyncio.create_task(client.post(CHAT, json=BODY))
        await asyncio.sleep(1.0)
        assert not request.done()  # held, no instant 503
        demand = await (await client.get("/demand")).json()
        assert demand["models"]["m"]["held"] == 1 and demand["total"] == 1
        down.healthy = True  # its next check passes: the held request goes at once
        resp = await asyncio.wait_for(request, 10)
        assert resp.status == 200 and resp.headers["X-Llmsvc-Backend"] == "b"


async def test_hold_timeout_zero_is_a_503_at_once(make_router: MakeRouter) -> None:
    down = Backend("b", healthy=False)
    async with running(down):
        client = await make_router([down], health_interval=0.2, hold_timeout=0)
        resp = await asyncio.wait_for(client.post(CHAT, json=BODY), 2)
        assert resp.status == 503
        assert (await resp.json())["error"]["code"] == "no_healthy_backend"


# --- the hold's wake-ups, in process: an event, or the moment a take-out ends


def pool_of_one(fail_timeout: float = 10) -> tuple[BackendPool, Holds, DemandCounter]:
    pool = BackendPool(max_fails=1, fail_timeout=fail_timeout)
    pool.set_static([ServiceRecord(name="e", host=HOST, port=1, metadata={"models": ["m"]})])
    demand = DemandCounter()
    return pool, Holds(pool, demand), demand


async def test_a_hold_wakes_on_the_pools_change_event() -> None:
    pool, holds, demand = pool_of_one()
    (backend,) = pool
    backend.record_check(False, time.monotonic())
    pool.health_changed()

    async def held() -> int:
        with holds.holding("m"):
            return len(await holds.until_eligible("m", 10))

    task = asyncio.create_task(held())
    await asyncio.sleep(0.05)
    assert not task.done() and demand.held == {"m": 1}
    backend.record_check(True, time.monotonic())
    pool.health_changed()  # what the health loop does when a check passes
    assert await asyncio.wait_for(task, 1) == 1
    assert demand.held == {}


async def test_a_hold_wakes_when_a_take_out_ends_by_itself() -> None:
    """No event marks the end of a passive take-out: the hold's timer does."""
    pool, holds, _ = pool_of_one(fail_timeout=0.3)
    (backend,) = pool
    assert backend.passive.record_failure(time.monotonic())  # out for 0.3 s
    pool.health_changed()
    started = time.monotonic()
    eligible = await asyncio.wait_for(holds.until_eligible("m", 10), 5)
    assert len(eligible) == 1 and time.monotonic() - started >= 0.25


async def test_a_hold_times_out_with_the_estimate_as_retry_after() -> None:
    pool, holds, _ = pool_of_one()
    (backend,) = pool
    backend.record_check(False, time.monotonic())
    sitter = {"model_name": "m", "startup_seconds": 40.0, "starting_since": time.time() - 10}
    pool.set_registry(
        [ServiceRecord(name="b", host=HOST, port=2, type="babysitter", metadata=sitter)]
    )
    assert holds.estimate("m") == pytest.approx(30, abs=2)
    with pytest.raises(NoHealthyBackend) as caught:
        await holds.until_eligible("m", 0.1)
    assert 28 <= int(caught.value.headers["Retry-After"]) <= 31
    holds.close(lambda model: NoHealthyBackend(model, 1))  # the drain: no hold waits now
    with pytest.raises(NoHealthyBackend):
        await asyncio.wait_for(holds.until_eligible("m", 10), 1)


async def test_a_model_forgotten_while_held_is_a_404() -> None:
    pool, holds, _ = pool_of_one()
    (backend,) = pool
    backend.record_check(False, time.monotonic())
    pool.health_changed()
    task = asyncio.create_task(holds.until_eligible("m", 10))
    await asyncio.sleep(0.05)
    pool.set_static([])  # its only record goes
    with pytest.raises(ModelNotFound):
        await asyncio.wait_for(task, 1)


async def test_a_held_streams_later_failure_is_in_band_too(make_router: MakeRouter) -> None:
    """Its headers are out: the engine's 5xx (no retry left) is an error event, no [DONE]."""
    broken = Backend("b", healthy=False, mode="fail")
    async with running(broken):
        client = await make_router(
            [broken], health_interval=0.2, retries=0, hold_feedback_interval=0.2, max_fails=0
        )
        request = asyncio.create_task(client.post(CHAT, json={**BODY, "stream": True}))
        await asyncio.sleep(0.5)
        broken.healthy = True
        resp = await asyncio.wait_for(request, 10)
        assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
        text = await asyncio.wait_for(resp.text(), 10)  # the stream ends, not left open
        lines = [line for line in text.split("\n") if line]
        assert lines[0].startswith(": waiting for m: 0 ahead")
        assert "data: [DONE]" not in lines and broken.hits == 1
        error = orjson.loads(lines[-1].removeprefix("data: "))["error"]
        assert (error["code"], error["type"]) == ("upstream_status", "upstream_error")
