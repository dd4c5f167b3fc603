"""The router under failure, with small aiohttp backends on real sockets whose
misbehaviour each test controls: slow streams, disconnects, 5xx, stalls, dead ports."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import ClientTimeout

import metrics
from procs import HOST
from routerbackends import BODY, CHAT, Backend, Client, MakeRouter, running, static_router

STREAM = {**BODY, "stream": True}


@pytest.fixture
def make_router(aiohttp_client: Callable[..., Awaitable[Client]], tmp_path: Path) -> MakeRouter:
    return functools.partial(static_router, aiohttp_client, tmp_path)


async def metric(client: Client, series: str) -> float:
    """The value of ``series`` in the router's /metrics; fails when it is missing."""
    return metrics.value(await (await client.get("/metrics")).text(), series)


async def test_sse_passes_through_chunk_by_chunk(make_router: MakeRouter) -> None:
    b = Backend("b", mode="stream")
    async with running(b):
        client = await make_router([b])
        resp = await client.post(CHAT, json=STREAM)
        assert resp.status == 200 and resp.headers["X-Llmsvc-Backend"] == "b"
        first = await asyncio.wait_for(resp.content.readany(), 5)
        assert first == b'data: {"n": 1}\n\n'  # while the backend holds back the rest
        assert not b.go.is_set()
        b.go.set()
        rest = await asyncio.wait_for(resp.content.read(), 5)
        assert rest == b'data: {"n": 2}\n\ndata: [DONE]\n\n'


async def test_client_disconnect_cancels_the_upstream(make_router: MakeRouter) -> None:
    b = Backend("b", mode="stall")
    async with running(b):
        client = await make_router([b])
        resp = await client.post(CHAT, json=STREAM)
        assert await asyncio.wait_for(resp.content.readany(), 5)
        resp.close()
        await asyncio.wait_for(b.cancelled.wait(), 5)
        stats = await (await client.get("/stats")).json()
        assert stats["backends"]["b"]["in_flight"] == 0

        b.cancelled.clear()
        b.mode = "slow"  # non-streaming: the client gives up while waiting
        with pytest.raises(TimeoutError):
            await client.post(CHAT, json=BODY, timeout=ClientTimeout(total=0.3))
        await asyncio.wait_for(b.cancelled.wait(), 5)


async def test_retry_after_connect_error(make_router: MakeRouter) -> None:
    gone, good = Backend("gone"), Backend("good")
    async with running(good):
        async with running(gone):
            client = await make_router([gone, good], max_fails=0)
            await wait_for(lambda: checked(client, "gone"), True)  # passed its first check
        for _ in range(4):  # "gone" stopped listening after its check: connect errors
            resp = await client.post(CHAT, json=BODY)
            assert resp.status == 200 and resp.headers["X-Llmsvc-Backend"] == "good"
        assert good.hits == 4
        kind = 'llmsvc_router_upstream_errors_total{backend="gone",kind="connect"}'
        assert await metric(client, kind) == 2  # round robin offers "gone" every other time
        assert await metric(client, 'llmsvc_router_retries_total{model_name="m"}') == 2


async def checked(client: Client, name: str) -> bool:
    services = (await (await client.get("/services")).json())["services"]
    return any(s["name"] == name and s["active_check_age_s"] is not None for s in services)


async def test_retry_after_5xx_and_502_when_all_fail(make_router: MakeRouter) -> None:
    bad, good = Backend("bad", mode="fail"), Backend("good")
    async with running(bad, good):
        client = await make_router([bad, good], max_fails=0)
        for _ in range(2):
            resp = await client.post(CHAT, json=BODY)
            assert resp.status == 200 and (await resp.json()) == {"served_by": "good"}
        good.mode = "fail"
        resp = await client.post(CHAT, json=STREAM)
        assert resp.status == 502
        error = (await resp.json())["error"]
        assert error["type"] == "upstream_error" and "answered 500" in error["message"]


async def test_retries_are_bounded(make_router: MakeRouter) -> None:
    backends = [Backend(f"b{i}", mode="fail") for i in range(4)]
    async with running(*backends):
        client = await make_router(backends, retries=1, max_fails=0)
        assert (await client.post(CHAT, json=BODY)).status == 502
        assert sum(b.hits for b in backends) == 2


async def test_passive_max_fails_takes_a_backend_out(make_router: MakeRouter) -> None:
    bad, good = Backend("bad", mode="fail"), Backend("good")
    async with running(bad, good):
        client = await make_router([bad, good], retries=0, max_fails=2, fail_timeout=30)
        statuses = [(await client.post(CHAT, json=BODY)).status for _ in range(8)]
        assert statuses == [502, 200, 502, 200, 200, 200, 200, 200]
        assert bad.hits == 2
        view = {s["name"]: s for s in (await (await client.get("/services")).json())["services"]}
        assert view["bad"]["eligible"] is False and view["bad"]["passive"]["available"] is False
        assert (await (await client.get("/health")).json())["healthy_backends"] == 1


async def test_active_health_checks(make_router: MakeRouter) -> None:
    a, b = Backend("a"), Backend("b")
    async with running(a, b):
        client = await make_router([a, b], health_interval=0.1)

        async def healthy() -> int:
            return int((await (await client.get("/health")).json())["healthy_backends"])

        a.healthy = False
        await wait_for(healthy, 1)
        served = {(await client.post(CHAT, json=BODY)).headers["X-Llmsvc-Backend"] for _ in "xyz"}
        assert served == {"b"}
        assert await metric(client, 'llmsvc_router_backend_healthy{backend="a"}') == 0
        a.healthy = True
        await wait_for(healthy, 2)


async def wait_for(probe: Callable[[], Awaitable[Any]], expected: Any, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while (value := await probe()) != expected:
        assert time.monotonic() < deadline, f"still {value!r}, expected {expected!r}"
        await asyncio.sleep(0.05)


async def test_first_byte_timeout_retries_then_504(make_router: MakeRouter) -> None:
    slow, good = Backend("slow", mode="slow"), Backend("good")
    async with running(slow, good):
        client = await make_router([slow, good], first_byte_timeout=0.3)
        started = time.monotonic()
        resp = await client.post(CHAT, json=BODY)
        assert resp.status == 200 and resp.headers["X-Llmsvc-Backend"] == "good"
        assert time.monotonic() - started < 3
        client2 = await make_router([slow], first_byte_timeout=0.3)
        resp = await client2.post(CHAT, json=STREAM)
        assert resp.status == 504
        assert (await resp.json())["error"]["code"] == "upstream_timeout"


async def test_stream_idle_timeout_ends_with_in_band_error(make_router: MakeRouter) -> None:
    b = Backend("b", mode="stall")
    async with running(b):
        client = await make_router([b], stream_idle_timeout=0.3)
        resp = await client.post(CHAT, json=STREAM)
        assert resp.status == 200
        text = (await asyncio.wait_for(resp.read(), 5)).decode()
        events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
        assert events[0] == '{"n": 1}' and "[DONE]" not in events
        error = orjson.loads(events[-1])["error"]
        assert error["code"] == "stream_idle_timeout" and error["type"] == "upstream_error"
        await asyncio.wait_for(b.cancelled.wait(), 5)  # and the upstream was closed


async def test_upstream_dying_mid_stream_ends_with_in_band_error(make_router: MakeRouter) -> None:
    b = Backend("b", mode="die")
    async with running(b):
        client = await make_router([b])
        resp = await client.post(CHAT, json=STREAM)
        text = (await asyncio.wait_for(resp.read(), 5)).decode()
        assert text.startswith('data: {"n": 1}\n\n')
        assert '"code":"upstream_stream"' in text and "[DONE]" not in text
        kind = 'llmsvc_router_upstream_errors_total{backend="b",kind="stream"}'
        assert await metric(client, kind) == 1


async def test_headers_and_body_are_forwarded(make_router: MakeRouter) -> None:
    b = Backend("b")
    async with running(b):
        client = await make_router([b], api_keys=["secret"])
        raw = b'{"model":  "m", "messages": [],   "extra": {"kept": true}}'
        headers = {
            "Authorization": "Bearer secret",
            "Content-Type": "application/json",
            "X-Custom": "1",
            "X-Forwarded-For": "10.0.0.1",
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "drop me",
            "Expect": "100-continue",
        }
        resp = await client.post(CHAT, data=raw, headers=headers)
        assert resp.status == 200
        assert resp.headers["X-Upstream"] == "b" and "Keep-Alive" not in resp.headers
        assert b.seen_bodies == [raw]
        seen = b.seen_headers[0]
        assert seen["X-Custom"] == "1"
        assert seen["X-Forwarded-For"] == "10.0.0.1, 127.0.0.1"
        assert seen["X-Forwarded-Proto"] == "http"
        assert "Authorization" not in seen and "X-Hop" not in seen and "Expect" not in seen
        assert seen["Host"] == f"{HOST}:{b.port}"


async def test_no_backend_left_after_all_taken_out_is_503(make_router: MakeRouter) -> None:
    bad = Backend("bad", mode="fail")
    async with running(bad):
        # No hold (--hold-timeout 0): the 503 itself is what this test is about.
        client = await make_router([bad], max_fails=1, retries=0, hold_timeout=0)
        assert (await client.post(CHAT, json=BODY)).status == 502
        resp = await client.post(CHAT, json=BODY)
        assert resp.status == 503
        assert (await resp.json())["error"]["message"] == (
            "No healthy services available for model 'm'"
        )


async def test_least_connections_avoids_the_busy_backend(make_router: MakeRouter) -> None:
    busy, idle = Backend("busy", mode="stream"), Backend("idle")
    async with running(busy, idle):
        client = await make_router([busy, idle], strategy="least_connections")
        stream = await client.post(CHAT, json=STREAM)  # a tie: the first in turn
        assert stream.headers["X-Llmsvc-Backend"] == "busy"
        assert await asyncio.wait_for(stream.content.readany(), 5)
        assert await metric(client, 'llmsvc_router_in_flight{backend="busy"}') == 1
        for _ in range(3):
            resp = await client.post(CHAT, json=BODY, timeout=ClientTimeout(total=5))
            assert resp.headers["X-Llmsvc-Backend"] == "idle"
        busy.go.set()
        assert (await stream.read()).endswith(b"data: [DONE]\n\n")
        assert (busy.hits, idle.hits) == (1, 3)
        assert await metric(client, 'llmsvc_router_in_flight{backend="busy"}') == 0


async def test_upstream_connections_are_reused(make_router: MakeRouter) -> None:
    b = Backend("b")
    async with running(b):
        client = await make_router([b])
        await wait_for(lambda: checked(client, "b"), True)  # its connection is back in the pool
        for body in (BODY, STREAM, BODY, BODY, {**BODY, "model": "nope"}, BODY):
            await (await client.post(CHAT, json=body)).read()
        assert b.hits == 5 and len(b.seen_peers) == 1
