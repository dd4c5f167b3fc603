"""Maintenance in the router: the board (pure, injected times), its watch of a registry,
and two real router processes obeying one registry's entries within one blocking-query
round while a stream that started before keeps running to its end."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from llmsvc.core.maintenance import MaintenanceEntry, MaintenanceRequest
from llmsvc.core.registry_client import RegistryClient
from llmsvc.registry.app import create_app as create_registry
from llmsvc.registry.settings import RegistrySettings
from llmsvc.router.maintenance import InMaintenance, Maintenance, watch_maintenance
from procs import HOST, Spawn, start_registry, start_router, start_sim_engine, wait_until

NOW = 1_800_000_000.0  # a Unix time for the board's pure tests
WRITE = "router-maint-write"
ADMIN_TOKEN = "router-maint-admin"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
WRITER = {"Authorization": f"Bearer {WRITE}"}


def entry(
    model: str = "m",
    *,
    until_s: float | None = None,
    backend: str | None = None,
    message: str = "x",
) -> MaintenanceEntry:
    """An entry ending ``until_s`` seconds after :data:`NOW` (None: no end)."""
    until = None if until_s is None else datetime.fromtimestamp(NOW + until_s, UTC)
    since = datetime.fromtimestamp(NOW - 10, UTC)
    return MaintenanceEntry(model=model, backend=backend, message=message, until=until, since=since)


# -- the board -----------------------------------------------------------------------------


def test_a_model_wide_entry_is_a_503_with_its_message_and_retry_after() -> None:
    board = Maintenance()
    board.set([entry(until_s=90.2, message="Upgrading to v2")])
    with pytest.raises(InMaintenance) as caught:
        board.check("m", NOW)
    error = caught.value
    assert (error.status, error.code, error.message) == (503, "maintenance", "Upgrading to v2")
    assert error.type == "service_unavailable_error"
    assert error.headers["Retry-After"] == "91"  # whole seconds, rounded up
    board.check("other", NOW)  # another model is served


def test_retry_after_without_an_end_and_at_the_last_second() -> None:
    board = Maintenance()
    board.set([entry(message="open-ended")])
    with pytest.raises(InMaintenance) as caught:
        board.check("m", NOW)
    assert caught.value.headers["Retry-After"] == "60"
    board.set([entry(until_s=0.2)])
    with pytest.raises(InMaintenance) as caught:
        board.check("m", NOW)
    assert caught.value.headers["Retry-After"] == "1"  # never 0


def test_an_entry_stops_at_its_until_even_before_the_registry_drops_it() -> None:
    board = Maintenance()
    board.set([entry(until_s=5)])
    with pytest.raises(InMaintenance):
        board.check("m", NOW + 4.9)
    board.check("m", NOW + 5)
    board.check("m", NOW + 3600)


def test_of_several_entries_the_one_that_ends_last_answers() -> None:
    board = Maintenance()
    board.set([entry(until_s=60, message="a"), entry(until_s=600, message="b")])
    with pytest.raises(InMaintenance) as caught:
        board.check("m", NOW)
    assert (caught.value.message, caught.value.headers["Retry-After"]) == ("b", "600")
    board.set([entry(until_s=60, message="a"), entry(message="forever")])
    with pytest.raises(InMaintenance) as caught:
        board.check("m", NOW)
    assert caught.value.message == "forever"


def test_a_backend_entry_takes_that_backend_out_for_that_model_only() -> None:
    board = Maintenance()
    assert not board.backend_out("e1", "m", NOW)
    board.set([entry(backend="e1", until_s=30, message="disk swap")])
    board.check("m", NOW)  # the model as a whole is served
    assert board.backend_out("e1", "m", NOW)
    assert not board.backend_out("e2", "m", NOW)
    assert not board.backend_out("e1", "other", NOW)
    assert not board.backend_out("e1", "m", NOW + 30)
    found = board.backend_entry("e1", "m", NOW)
    assert found is not None and found.message == "disk swap"
    board.set([])
    assert not board.backend_out("e1", "m", NOW) and board.entries() == []


# -- the watch against an in-process registry ---------------------------------------------


@pytest.fixture
async def registry_server() -> AsyncIterator[TestServer]:
    settings = RegistrySettings(
        token=WRITE, admin_token=ADMIN_TOKEN, health_interval=60, cleanup_interval=60
    )
    server = TestServer(create_registry(settings, registry=CollectorRegistry()), host=HOST)
    await server.start_server()
    yield server
    await server.close()


async def eventually(probe: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``probe()`` is true; fails after ``timeout``."""
    started = time.monotonic()
    while not probe():
        assert time.monotonic() - started < timeout, "condition not met in time"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def test_the_watch_follows_the_registry_by_its_blocking_query(
    registry_server: TestServer,
) -> None:
    board = Maintenance()
    changes: list[int] = []
    async with aiohttp.ClientSession() as session:
        url = str(registry_server.make_url("")).rstrip("/")
        client = RegistryClient(base_url=url, session=session, token=WRITE)
        # A 60 s wait: only the blocking query's wake-up can explain a quick update.
        watch = asyncio.create_task(
            watch_maintenance(client, board, wait=60, on_change=lambda: changes.append(1))
        )
        try:
            await asyncio.sleep(0.2)  # the first query has answered; the next one blocks
            request = MaintenanceRequest(message="Upgrading")
            await client.put_maintenance("m", request, admin_token=ADMIN_TOKEN)
            assert await eventually(lambda: bool(board.entries()), 5) < 5
            with pytest.raises(InMaintenance):
                board.check("m", time.time())
            await client.delete_maintenance("m", admin_token=ADMIN_TOKEN)
            await eventually(lambda: not board.entries(), 5)
            board.check("m", time.time())
            assert len(changes) == 2
        finally:
            watch.cancel()
            with pytest.raises(asyncio.CancelledError):
                await watch


# -- two router processes, one registry ----------------------------------------------------


def _chat(stream: bool = False, max_tokens: int = 1) -> dict[str, Any]:
    return {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


async def _answers(http: httpx.AsyncClient, router: str) -> tuple[int, dict[str, Any], str | None]:
    resp = await http.post(f"{router}/v1/chat/completions", json=_chat())
    return resp.status_code, resp.json(), resp.headers.get("Retry-After")


async def _wait_for_status(
    http: httpx.AsyncClient, routers: list[str], status: int, timeout: float
) -> list[tuple[int, dict[str, Any], str | None]]:
    """Each router's first answer with ``status`` (polled); fails after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    found = []
    for router in routers:
        while (answer := await _answers(http, router))[0] != status:
            assert time.monotonic() < deadline, f"{router} still answers {answer}"
            await asyncio.sleep(0.05)
        found.append(answer)
    return found


@pytest.fixture
def fleet(spawn: Spawn) -> tuple[str, list[str]]:
    """A registry, one real-time engine registered in it, two routers following it:
    (registry URL, router URLs)."""
    _, registry = start_registry(
        spawn, "--admin-token", ADMIN_TOKEN, "--heartbeat-ttl", "0", token=WRITE
    )
    # A real-time engine, 10 tokens/s: a 30-token stream takes about 3 s.
    _, port = start_sim_engine(spawn, "e1", "--time-scale", "1", "--decode-tokens-per-s", "10")
    record = {"name": "e1", "host": HOST, "port": port, "metadata": {"models": ["m"]}}
    assert httpx.post(f"{registry}/services", json=record, headers=WRITER).status_code == 201
    # A 30 s sync interval: only the blocking query explains a change seen in seconds.
    flags = ("--registry-token", WRITE, "--registry-sync-interval", "30")
    routers = [start_router(spawn, registry, *flags, name=f"router-{i}")[1] for i in (1, 2)]
    return registry, routers


async def test_two_routers_obey_one_registry_and_running_streams_finish(
    fleet: tuple[str, list[str]],
) -> None:
    registry, routers = fleet
    async with httpx.AsyncClient(timeout=30) as http:
        await _wait_for_status(http, routers, 200, 20)
        async with http.stream(
            "POST", f"{routers[0]}/v1/chat/completions", json=_chat(stream=True, max_tokens=30)
        ) as stream:
            assert stream.status_code == 200
            lines = stream.aiter_lines()
            first = await anext(lines)
            assert first.startswith("data: ")

            until = datetime.now(UTC) + timedelta(seconds=120)
            body = {"message": "Upgrading to v2", "until": until.isoformat()}
            put = await http.put(f"{registry}/maintenance/m", json=body, headers=ADMIN)
            assert put.status_code == 200, put.text
            started = time.monotonic()
            answers = await _wait_for_status(http, routers, 503, 5)
            assert time.monotonic() - started < 5
            for _, error, retry_after in answers:
                assert error["error"]["code"] == "maintenance"
                assert error["error"]["message"] == "Upgrading to v2"
                assert retry_after is not None and 110 <= int(retry_after) <= 120

            rest = [line async for line in lines if line]
            assert rest[-1] == "data: [DONE]"  # the stream that started before finished
            assert not any('"error"' in line for line in rest)

        delete = await http.delete(f"{registry}/maintenance/m", headers=ADMIN)
        assert delete.status_code == 200
        started = time.monotonic()
        await _wait_for_status(http, routers, 200, 5)
        assert time.monotonic() - started < 5


def test_a_backend_entry_steers_around_that_backend(spawn: Spawn) -> None:
    _, registry = start_registry(
        spawn, "--admin-token", ADMIN_TOKEN, "--heartbeat-ttl", "0", token=WRITE
    )
    for name in ("e1", "e2"):
        _, port = start_sim_engine(spawn, name)
        record = {"name": name, "host": HOST, "port": port, "metadata": {"models": ["m"]}}
        assert httpx.post(f"{registry}/services", json=record, headers=WRITER).status_code == 201
    flags = ("--registry-token", WRITE, "--registry-sync-interval", "30")
    _, router = start_router(spawn, registry, *flags)
    chat = f"{router}/v1/chat/completions"

    def backends(n: int = 6) -> set[str | None]:
        return {httpx.post(chat, json=_chat()).headers.get("X-Llmsvc-Backend") for _ in range(n)}

    wait_until(lambda: backends() == {"e1", "e2"}, timeout=20, what="both engines serving")
    body = {"message": "disk swap on e1", "backend": "e1"}
    assert httpx.put(f"{registry}/maintenance/m", json=body, headers=ADMIN).status_code == 200
    wait_until(lambda: backends() == {"e2"}, timeout=5, what="e1 out")
    assert backends(20) == {"e2"}  # e1 takes nothing new; the model is still served

    body = {"message": "disk swap on e2", "backend": "e2"}
    assert httpx.put(f"{registry}/maintenance/m", json=body, headers=ADMIN).status_code == 200
    resp = wait_until(
        lambda: (r := httpx.post(chat, json=_chat())).status_code == 503 and r,
        timeout=5,
        what="every backend out",
    )
    error = resp.json()["error"]
    assert error["code"] == "maintenance"
    assert error["message"] in ("disk swap on e1", "disk swap on e2")
    assert resp.headers["Retry-After"] == "60"  # no until

    assert httpx.delete(f"{registry}/maintenance/m?backend=e1", headers=ADMIN).status_code == 200
    wait_until(lambda: backends() == {"e1"}, timeout=5, what="e1 back")
