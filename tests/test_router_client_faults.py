"""Client faults are not backend faults: what a client sends wrong is answered by the
router (415, 400, 413, 431, a short 503) before any backend sees it, and a request that
fails the same way on two backends (a poison request) ejects none of them."""

from __future__ import annotations

import functools
import gzip
import logging
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from procs import free_port
from routerbackends import (
    BODY,
    CHAT,
    HANG,
    POISON,
    Backend,
    Client,
    MakeRouter,
    running,
    static_router,
)

JSON = {"Content-Type": "application/json"}


@pytest.fixture
def make_router(aiohttp_client: Callable[..., Awaitable[Client]], tmp_path: Path) -> MakeRouter:
    return functools.partial(static_router, aiohttp_client, tmp_path)


async def error_of(resp: Any) -> dict[str, Any]:
    body = await resp.json()
    assert set(body) == {"error"} and isinstance(body["error"]["message"], str)
    error: dict[str, Any] = body["error"]
    return error


async def view(client: Client) -> dict[str, dict[str, Any]]:
    """``GET /services`` by backend name."""
    services = (await (await client.get("/services")).json())["services"]
    return {s["name"]: s for s in services}


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("identity", lambda b: b)],
)
async def test_encoded_body_is_decoded_and_forwarded_without_the_header(
    make_router: MakeRouter, encoding: str, encode: Callable[[bytes], bytes]
) -> None:
    engine = Backend("a")
    async with running(engine):
        client = await make_router([engine])
        raw = orjson.dumps(BODY)
        headers = {**JSON, "Content-Encoding": encoding}
        resp = await client.post(CHAT, data=encode(raw), headers=headers)
        assert resp.status == 200, await resp.text()
        assert engine.seen_bodies == [raw]
        assert all(k.lower() != "content-encoding" for k in engine.seen_headers[0])
        assert engine.seen_headers[0]["Content-Length"] == str(len(raw))


@pytest.mark.parametrize("encoding", ["br", "zstd", "gzip, gzip", "x-unknown"])
async def test_unsupported_encoding_is_415_before_any_backend(
    make_router: MakeRouter, encoding: str
) -> None:
    engine = Backend("a")
    async with running(engine):
        client = await make_router([engine])
        headers = {**JSON, "Content-Encoding": encoding}
        resp = await client.post(CHAT, data=gzip.compress(orjson.dumps(BODY)), headers=headers)
        assert resp.status == 415
        assert (await error_of(resp))["code"] == "unsupported_media_type"
        assert engine.seen_bodies == []


async def test_body_that_does_not_decode_is_400_without_a_traceback(
    make_router: MakeRouter, caplog: pytest.LogCaptureFixture
) -> None:
    engine = Backend("a")
    async with running(engine):
        client = await make_router([engine])
        headers = {**JSON, "Content-Encoding": "gzip"}
        with caplog.at_level(logging.DEBUG):
            resp = await client.post(CHAT, data=orjson.dumps(BODY), headers=headers)
        assert resp.status == 400
        assert (await error_of(resp))["code"] == "invalid_encoding"
        assert engine.seen_bodies == []
        assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


async def test_decoded_body_over_the_limit_is_413(make_router: MakeRouter) -> None:
    engine = Backend("a")
    async with running(engine):
        client = await make_router([engine], max_body_bytes=64 * 1024)
        padded = {**BODY, "pad": "x" * (1024 * 1024)}  # 1 MiB decoded, about 1 KiB sent
        bomb = gzip.compress(orjson.dumps(padded))
        assert len(bomb) < 64 * 1024
        headers = {**JSON, "Content-Encoding": "gzip"}
        resp = await client.post(CHAT, data=bomb, headers=headers)
        assert resp.status == 413
        assert (await error_of(resp))["code"] == "body_too_large"
        assert engine.seen_bodies == []


async def test_poison_requests_leave_the_fleet_healthy(make_router: MakeRouter) -> None:
    engines = [Backend("a"), Backend("b"), Backend("c")]
    async with running(*engines):
        client = await make_router(engines, max_fails=1, retries=2)
        for _ in range(3):
            resp = await client.post(CHAT, json=POISON)
            assert resp.status == 502
        # Two backends answered each poison request the same way: no third was tried.
        assert sum(len(e.seen_bodies) for e in engines) == 6
        services = await view(client)
        assert all(s["eligible"] for s in services.values()), services
        assert all(s["passive"]["recent_failures"] == 0 for s in services.values()), services
        served = set()
        for _ in range(6):
            resp = await client.post(CHAT, json=BODY)
            assert resp.status == 200
            served.add((await resp.json())["served_by"])
        assert served == {"a", "b", "c"}


async def test_a_backend_failing_alone_still_counts(make_router: MakeRouter) -> None:
    bad, good = Backend("bad", mode="fail"), Backend("good")
    async with running(bad, good):
        client = await make_router([bad, good], max_fails=1, retries=1)
        for _ in range(4):
            resp = await client.post(CHAT, json=BODY)
            assert resp.status == 200
        services = await view(client)
        assert not services["bad"]["eligible"] and services["good"]["eligible"]


async def test_a_huge_model_is_not_echoed_whole(make_router: MakeRouter) -> None:
    engine = Backend("a")
    async with running(engine):
        client = await make_router([engine])
        resp = await client.post(CHAT, json={**BODY, "model": "x" * (1024 * 1024)})
        assert resp.status == 404  # unknown: model_not_found
        message = (await error_of(resp))["message"]
        assert len(message) < 400
        assert message.startswith("The model `xxx")
        resp = await client.post(CHAT, json={**BODY, "model": "nope"})
        message = (await error_of(resp))["message"]
        assert message == "The model `nope` does not exist or you do not have access to it."


async def test_headers_over_the_total_limit_are_431(make_router: MakeRouter) -> None:
    engine = Backend("a")
    async with running(engine):
        client = await make_router([engine])
        headers = {**JSON, **{f"X-Pad-{i}": "v" * 8000 for i in range(120)}}
        resp = await client.post(CHAT, json=BODY, headers=headers)
        assert resp.status == 431
        assert (await error_of(resp))["code"] == "headers_too_large"
        assert engine.seen_bodies == []
        small = {**JSON, **{f"X-Pad-{i}": "v" * 1000 for i in range(20)}}
        resp = await client.post(CHAT, json=BODY, headers=small)
        assert resp.status == 200


async def test_connect_errors_always_count_and_are_retried(make_router: MakeRouter) -> None:
    """Two dead backends refuse the same request: the request cannot be the cause."""
    good = Backend("good")
    dead = [Backend("dead-1", port=free_port()), Backend("dead-2", port=free_port())]
    async with running(good):
        client = await make_router([*dead, good], max_fails=1, retries=2)
        for _ in range(3):
            resp = await client.post(CHAT, json=BODY)
            assert resp.status == 200
            assert (await resp.json())["served_by"] == "good"
        services = await view(client)
        assert not services["dead-1"]["eligible"] and not services["dead-2"]["eligible"]


async def test_a_poison_stream_leaves_the_fleet_healthy(make_router: MakeRouter) -> None:
    engines = [Backend("a"), Backend("b")]
    async with running(*engines):
        client = await make_router(engines, max_fails=1, retries=1)
        for _ in range(3):
            resp = await client.post(CHAT, json={**POISON, "stream": True})
            assert resp.status == 502
        services = await view(client)
        assert all(s["eligible"] for s in services.values()), services
        resp = await client.post(CHAT, json=BODY)
        assert resp.status == 200


async def test_a_request_that_times_out_everywhere_leaves_the_fleet_healthy(
    make_router: MakeRouter,
) -> None:
    engines = [Backend("a"), Backend("b"), Backend("c")]
    async with running(*engines):
        client = await make_router(engines, max_fails=1, retries=2, first_byte_timeout=0.3)
        resp = await client.post(CHAT, json=HANG)
        assert resp.status == 504
        assert sum(len(e.seen_bodies) for e in engines) == 2  # no third backend tried
        services = await view(client)
        assert all(s["eligible"] for s in services.values()), services
