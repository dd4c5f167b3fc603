"""Hung engines cost seconds with the router's DEFAULT settings (issue 11, item 4).

A stand-in that stops answering everything, ``/health`` included (as a SIGSTOPped engine
does: the kernel accepts, nothing answers), is ejected within a few seconds by the
suspicion probe a waiting request triggers, and the requests waiting on it are retried
elsewhere and succeed. A busy engine whose ``/health`` answers is never ejected by it.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import pytest
from aiohttp import ClientTimeout

import metrics
from llmsvc.router.settings import RouterSettings
from routerbackends import BODY, CHAT, Backend, Client, MakeRouter, running, static_router

STREAM: dict[str, object] = {**BODY, "stream": True}
DEFAULT_HEALTH_INTERVAL = RouterSettings.model_fields["health_interval"].default


@pytest.fixture
def make_router(aiohttp_client: Callable[..., Awaitable[Client]], tmp_path: Path) -> MakeRouter:
    """A router in front of static backends with every setting at its default."""
    return functools.partial(
        static_router, aiohttp_client, tmp_path, health_interval=DEFAULT_HEALTH_INTERVAL
    )


async def eligible(client: Client, name: str) -> bool:
    services = (await (await client.get("/services")).json())["services"]
    return bool(next(s for s in services if s["name"] == name)["eligible"])


async def ready(client: Client) -> None:
    """Until the router is ready (its first active check of the static services)."""
    for _ in range(100):
        if (await client.get("/health")).status == 200:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the router never became ready")


async def ask(client: Client, body: Mapping[str, object]) -> tuple[int, str, bytes]:
    resp = await client.post(CHAT, json=body, timeout=ClientTimeout(total=8))
    return resp.status, resp.headers.get("X-Llmsvc-Backend", ""), await resp.read()


async def test_a_hung_backend_is_ejected_and_its_requests_retried(
    make_router: MakeRouter,
) -> None:
    good, hung = Backend("good"), Backend("hung")
    async with running(good, hung):
        client = await make_router([good, hung])
        await ready(client)
        hung.mode = "hung"
        start = time.monotonic()
        # Open loop: a request every 0.1 s, each to whichever backend round robin says.
        tasks: list[asyncio.Task[tuple[int, str, bytes]]] = []
        while await eligible(client, "hung") and time.monotonic() - start < 5:
            body = STREAM if len(tasks) % 2 else BODY
            tasks.append(asyncio.create_task(ask(client, body)))
            await asyncio.sleep(0.1)
        ejected = time.monotonic() - start
        assert not await eligible(client, "hung"), "not ejected within 5 s"
        # The first request there waits --suspect-after (0.5 s), then the probe's
        # --health-timeout (1 s): about 1.5 s, with room for a busy machine.
        assert ejected < 3, f"ejected after {ejected:.1f}s"
        answers = await asyncio.gather(*tasks)
        assert hung.hits >= 1  # some requests were sent to it, and waited there
        assert [(status, backend) for status, backend, _ in answers] == [(200, "good")] * len(
            answers
        )
        text = await (await client.get("/metrics")).text()
        assert metrics.value(text, 'llmsvc_router_retries_total{model_name="m"}') >= 1
        series = 'llmsvc_router_ejections_total{backend="hung",reason="suspect_probe"}'
        assert metrics.value(text, series) == 1


async def test_a_busy_backend_whose_health_answers_is_not_ejected(
    make_router: MakeRouter,
) -> None:
    """Slow answers (no first byte for 2.5 s) with a /health that answers: the probe
    passes, the backend stays, and every request is answered where it was sent."""
    slow = Backend("slow", mode="slow", slow_s=2.5)
    async with running(slow):
        client = await make_router([slow])
        await ready(client)
        resp = await client.post(CHAT, json=BODY, timeout=ClientTimeout(total=8))
        assert resp.status == 200 and resp.headers["X-Llmsvc-Backend"] == "slow"
        assert await eligible(client, "slow")
        text = await (await client.get("/metrics")).text()
        passed = 'llmsvc_router_suspect_probes_total{backend="slow",result="passed"}'
        assert metrics.value(text, passed) == 1


async def test_without_first_byte_timeout_the_floor_applies(make_router: MakeRouter) -> None:
    """No --first-byte-timeout and no history: a plain request waits the plain floor,
    then goes to another backend; alone, it ends in 504 naming the limit."""
    slow, good = Backend("slow", mode="slow"), Backend("good")
    async with running(slow, good):
        client = await make_router([slow, good], plain_first_byte_floor=0.5)
        await ready(client)
        answers = [await ask(client, BODY) for _ in range(2)]
        assert [(s, b) for s, b, _ in answers] == [(200, "good"), (200, "good")]
        alone = await make_router([slow], plain_first_byte_floor=0.5)
        await ready(alone)
        status, _, body = await ask(alone, BODY)
        assert status == 504 and b"sent nothing within 0.5s" in body


async def test_a_stream_stalled_on_a_hung_backend_ends_at_its_ejection(
    make_router: MakeRouter,
) -> None:
    """A stream that sent its first chunk, then its backend hung: when a waiting request's
    probe ejects the backend, the stream ends with the in-band error event at once, not
    at --proxy-timeout."""
    b = Backend("b", mode="stream")
    async with running(b):
        client = await make_router([b])
        await ready(client)
        stream = await client.post(CHAT, json=STREAM)
        assert await asyncio.wait_for(stream.content.readany(), 5) == b'data: {"n": 1}\n\n'
        b.mode = "hung"  # the stream stalls, /health stops answering
        start = time.monotonic()
        status, _, _ = await ask(client, BODY)  # waits, probes, is rescued: nowhere to go
        assert status in (502, 503)
        rest = await asyncio.wait_for(stream.content.read(), 5)
        assert time.monotonic() - start < 3.5
        assert b'"code":"upstream_ejected"' in rest and b"[DONE]" not in rest
        text = await (await client.get("/metrics")).text()
        series = 'llmsvc_router_upstream_errors_total{backend="b",kind="ejected"}'
        assert metrics.value(text, series) == 2  # the waiting request and the stream
