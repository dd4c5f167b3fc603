"""The request path's admission steps in process, against stand-in engines on real sockets:
the request id (forwarded upstream, returned on answers and errors), an unknown priority,
per-backend maintenance (skipped; every backend out: 503 ``maintenance``), and the queue
wait counted toward ``--proxy-timeout``."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from llmsvc.core.maintenance import MaintenanceEntry
from llmsvc.router.app import ROUTER
from routerbackends import BODY, CHAT, Backend, Client, MakeRouter, running, static_router


@pytest.fixture
def make_router(aiohttp_client: Callable[..., Awaitable[Client]], tmp_path: Path) -> MakeRouter:
    return functools.partial(static_router, aiohttp_client, tmp_path)


def entry(backend: str | None, message: str, minutes: float | None = None) -> MaintenanceEntry:
    now = datetime.now(UTC)
    until = now + timedelta(minutes=minutes) if minutes is not None else None
    return MaintenanceEntry(model="m", backend=backend, message=message, since=now, until=until)


def sent(backend: Backend) -> dict[str, str]:
    """The headers of the last request the backend saw, by lower-case name."""
    return {k.lower(): v for k, v in backend.seen_headers[-1].items()}


async def test_the_request_id_goes_upstream_and_comes_back_on_answers_and_errors(
    make_router: MakeRouter,
) -> None:
    b = Backend("b")
    async with running(b):
        client = await make_router([b], hold_timeout=0)
        resp = await client.post(CHAT, json=BODY, headers={"X-Request-Id": "req-42"})
        assert resp.status == 200 and resp.headers["X-Request-Id"] == "req-42"
        assert sent(b)["x-request-id"] == "req-42"
        fresh = await client.post(CHAT, json=BODY, headers={"X-Request-Id": "bad id"})
        generated = fresh.headers["X-Request-Id"]  # not a sane token: a new one
        assert generated != "bad id" and len(generated) == 32
        assert sent(b)["x-request-id"] == generated
        bad = await client.post(CHAT, json=BODY, headers={"X-Llmsvc-Priority": "urgent"})
        assert bad.status == 400 and bad.headers["X-Request-Id"]
        error = (await bad.json())["error"]
        assert (error["code"], error["param"]) == ("invalid_priority", "X-Llmsvc-Priority")
        assert b.hits == 2  # the bad priority never reached it


async def test_a_backend_in_maintenance_is_skipped_and_all_out_is_503(
    make_router: MakeRouter,
) -> None:
    a, b = Backend("a"), Backend("b")
    async with running(a, b):
        client = await make_router([a, b])
        board = client.app[ROUTER].maintenance
        board.set([entry("a", "a's disk is being replaced")])
        for _ in range(4):
            resp = await client.post(CHAT, json=BODY)
            assert resp.status == 200 and resp.headers["X-Llmsvc-Backend"] == "b"
        assert a.hits == 0
        board.set([entry("a", "disk"), entry("b", "b's firmware update", minutes=10)])
        resp = await client.post(CHAT, json=BODY)
        assert resp.status == 503
        error = (await resp.json())["error"]
        assert error["code"] == "maintenance"
        assert error["message"] in ("disk", "b's firmware update")
        assert int(resp.headers["Retry-After"]) >= 1
        board.set([entry(None, "the whole model, until noon", minutes=5)])
        resp = await client.post(CHAT, json=BODY)
        assert resp.status == 503
        assert (await resp.json())["error"]["message"] == "the whole model, until noon"
        assert 1 <= int(resp.headers["Retry-After"]) <= 300
        board.set([])
        assert (await client.post(CHAT, json=BODY)).status == 200


async def test_the_queue_wait_counts_toward_the_proxy_timeout(make_router: MakeRouter) -> None:
    """With --proxy-timeout 3: a request that waited 2 s for its slot gets about 1 s from
    its (slow) backend, not 3 s."""
    b = Backend("b", mode="stream")  # the first request holds the one slot until ``go``
    async with running(b):
        client = await make_router(
            [b], backend_concurrency=1, proxy_timeout=3, plain_first_byte_floor=30, retries=0
        )
        first = asyncio.create_task(client.post(CHAT, json=BODY))
        await asyncio.sleep(0.5)  # it reaches the backend and takes the slot
        assert b.hits == 1
        second = asyncio.create_task(client.post(CHAT, json=BODY))
        await asyncio.sleep(2.0)  # queued behind the first
        b.mode = "slow"  # the queued request's answer will not come in time
        started = time.monotonic()
        b.go.set()
        assert (await first).status == 200
        resp = await asyncio.wait_for(second, 10)
        waited_upstream = time.monotonic() - started
        assert resp.status == 504, await resp.text()
        assert waited_upstream < 2.5  # what was left of 3 s, not a fresh 3 s
