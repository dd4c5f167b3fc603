"""The babysitter's own record tells routers how long a cold start takes: ``state``,
``starting_since`` (Unix time the start under way began) and ``startup_seconds`` (the
last measured launch-to-ready), published at each state change (not at the next heartbeat).

A real babysitter of a sim engine that loads for 2 s (``--startup-delay``), a real registry.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp.test_utils import TestClient

from llmsvc.babysitter.registration import Registrar, babysitter_record
from llmsvc.core.registry_client import RegistryClient
from procs import (
    Spawn,
    registry_record,
    spawn_babysitter,
    start_registry,
    start_router,
    wait_until,
)
from registryapp import registry_client

DELAY = 2.0
HEARTBEAT = "20"
"""Far longer than a start: a record that changes within a few seconds was pushed by the
state change, not refreshed by a heartbeat round."""


def _sitter(registry: str, name: str, state: str) -> dict[str, Any] | None:
    record = registry_record(registry, f"{name}-babysitter")
    if record is None or record["metadata"].get("state") != state:
        return None
    meta: dict[str, Any] = record["metadata"]
    return meta


def test_record_tells_start_then_measured_startup(spawn: Spawn) -> None:
    _, registry = start_registry(spawn)
    before = time.time()
    proc, port, api = spawn_babysitter(
        spawn, "--engine", "sim", "--model", "m", "--registry", registry,
        "--heartbeat-interval", HEARTBEAT,
        "--", "--time-scale", "0", "--startup-delay", str(DELAY),
    )  # fmt: skip
    name = f"m@127.0.0.1:{port}"

    starting = wait_until(lambda: _sitter(registry, name, "starting"), what="starting record")
    since = starting["starting_since"]
    assert isinstance(since, float) and before - 1 <= since <= time.time()
    assert starting["startup_seconds"] is None  # nothing measured before the first start
    assert starting["model_name"] == "m"

    ready = wait_until(lambda: _sitter(registry, name, "ready"), timeout=8, what="ready record")
    assert ready["starting_since"] is None
    first = ready["startup_seconds"]
    assert DELAY <= first < 30  # the engine's own delay, plus its launch

    # A restart is a new start: a new starting_since, the last measured time kept meanwhile.
    assert httpx.post(api + "/restart", timeout=5).status_code == 202
    again = wait_until(
        lambda: (m := _sitter(registry, name, "starting")) and m["starting_since"] and m,
        timeout=8,
        what="starting again",
    )
    assert again["starting_since"] > since
    assert again["startup_seconds"] == first
    ready = wait_until(lambda: _sitter(registry, name, "ready"), timeout=8, what="ready again")
    assert ready["starting_since"] is None and DELAY <= ready["startup_seconds"] < 30
    assert proc.popen.poll() is None


def test_a_held_stream_hears_the_estimate_from_the_last_start(spawn: Spawn) -> None:
    """The router's hold reads the record: a stream sent while the engine restarts gets
    ``: waiting for m: 0 ahead, about N s`` with N from the last measured start, then the
    answer."""
    _, registry = start_registry(spawn)
    _, router = start_router(spawn, registry, "--hold-feedback-interval", "0.3")
    proc, port, api = spawn_babysitter(
        spawn, "--engine", "sim", "--model", "m", "--registry", registry,
        "--", "--time-scale", "0", "--startup-delay", str(DELAY),
    )  # fmt: skip
    name = f"m@127.0.0.1:{port}"
    first = wait_until(lambda: _sitter(registry, name, "ready"), timeout=15, what="ready")
    wait_until(lambda: _eligible(router, name), timeout=10, what="the router routes to it")

    assert httpx.post(api + "/restart", timeout=5).status_code == 202
    wait_until(lambda: _sitter(registry, name, "starting"), timeout=8, what="restarting")
    wait_until(lambda: not _eligible(router, name), timeout=8, what="the router holds")
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    with httpx.stream(
        "POST", router + "/v1/chat/completions", json={**body, "stream": True}, timeout=30
    ) as resp:
        assert resp.status_code == 200
        lines = [line for line in resp.iter_lines() if line]
    comments = [line for line in lines if line.startswith(":")]
    assert comments, lines
    estimate = re.fullmatch(r": waiting for m: 0 ahead, about (\d+) s", comments[0])
    assert estimate, comments
    assert 1 <= int(estimate.group(1)) <= round(first["startup_seconds"]) + 1
    assert lines[-1] == "data: [DONE]"
    assert proc.popen.poll() is None


def _eligible(router: str, name: str) -> bool:
    views = httpx.get(router + "/services", timeout=5).json()["services"]
    return any(v["name"] == name and v["eligible"] for v in views)


# --- the registrar's update of the babysitter's record, against the registry in process -----


@pytest.fixture
async def registrar(aiohttp_client: Any) -> AsyncIterator[tuple[Registrar, TestClient[Any, Any]]]:
    """A registrar of one babysitter record against an in-process registry."""
    client = await registry_client(aiohttp_client)
    async with aiohttp.ClientSession() as session:
        api = RegistryClient(base_url=str(client.make_url("")), session=session)
        record = babysitter_record(
            engine_name="e", host="127.0.0.1", port=9, metadata={"state": "starting"}
        )
        yield Registrar(client=api, babysitter=record), client


async def _settled(registrar: Registrar) -> None:
    """Until the registrar's own push (if any) is done."""
    if (task := registrar._pusher) is not None:
        await asyncio.wait_for(task, 10)  # one task syncs until no change is left


async def _meta(client: TestClient[Any, Any]) -> tuple[dict[str, Any], float]:
    resp = await client.get("/services/e-babysitter")
    record = await resp.json()
    return record["metadata"], record["registered_at"]


async def test_update_registers_anew_only_on_a_change(
    registrar: tuple[Registrar, TestClient[Any, Any]],
) -> None:
    reg, client = registrar
    await reg.tick()
    meta, first = await _meta(client)
    assert meta["state"] == "starting"
    reg.update_babysitter({"state": "starting"})  # no change: nothing sent
    assert reg._pusher is None
    reg.update_babysitter({"state": "ready", "startup_seconds": 2.5})
    await _settled(reg)
    meta, second = await _meta(client)
    assert (meta["state"], meta["startup_seconds"], meta["engine_service"]) == ("ready", 2.5, "e")
    assert second > first
    await reg.tick()  # a heartbeat round does not register it again
    assert (await _meta(client))[1] == second


async def test_a_change_during_a_push_is_pushed_too(
    registrar: tuple[Registrar, TestClient[Any, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change that comes while the registry is answering the push of the one before
    (the registrar awaits it) is registered too: nothing is left stale."""
    reg, client = registrar
    await reg.tick()
    api = reg._client
    assert api is not None
    register = api.register
    changes = [{"state": "ready", "startup_seconds": 1.0}]

    async def slow_register(record: Any, lease: str | None = None) -> Any:
        answer = await register(record, lease)
        if changes:  # the state moves on while this registration is in flight
            reg.update_babysitter(changes.pop())
        return answer

    monkeypatch.setattr(api, "register", slow_register)
    reg.update_babysitter({"state": "unhealthy"})
    await _settled(reg)
    meta, _ = await _meta(client)
    assert (meta["state"], meta["startup_seconds"]) == ("ready", 1.0)
    await reg.close()
    assert (await client.get("/services/e-babysitter")).status == 404
