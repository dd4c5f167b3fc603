"""A stream the client closes right after reading ``data: [DONE]`` (as guidellm does) is a
complete request: counted 200 in ``llmsvc_router_requests_total``, never 499, and its
upstream connection is read to its end and kept for the next request.

The clients here are raw sockets that send one request, read until ``[DONE]`` and close at
once, without reading the chunked encoding's terminator."""

from __future__ import annotations

import asyncio
import functools
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
import pytest

import metrics
from procs import HOST, Spawn, free_port, start_router, wait_until
from realengine import SERVER_ARGS
from routerbackends import BODY, CHAT, Backend, Client, MakeRouter, running, static_router

DONE = b"data: [DONE]\n\n"
STREAM = {**BODY, "stream": True, "max_tokens": 4}


def request_bytes(body: dict[str, object]) -> bytes:
    payload = orjson.dumps(body)
    head = (
        f"POST {CHAT} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


def read_until_done_and_close(port: int, *, timeout: float = 10) -> bytes:
    """One streamed request on a fresh connection, closed as soon as ``[DONE]`` came."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(request_bytes(STREAM))
        data = b""
        while DONE not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    return data


def statuses(text: str) -> dict[str, float]:
    """Requests counted so far, by status (any model and backend)."""
    found: dict[str, float] = {}
    for sample in metrics.matching(text, "llmsvc_router_requests_total"):
        status = sample.labels["status"]
        found[status] = found.get(status, 0.0) + sample.value
    return found


@pytest.fixture
def make_router(aiohttp_client: Callable[..., Awaitable[Client]], tmp_path: Path) -> MakeRouter:
    return functools.partial(static_router, aiohttp_client, tmp_path)


async def wait_for(probe: Callable[[], Awaitable[bool]], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not await probe():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_closed_after_done_is_200_and_the_upstream_connection_is_reused(
    make_router: MakeRouter,
) -> None:
    """The engine ends its stream 0.3 s after ``[DONE]``; the client is gone by then."""
    engine = Backend("b", mode="linger")
    async with running(engine):
        client = await make_router([engine])
        port = client.port
        assert port is not None
        for n in range(1, 4):
            data = await asyncio.to_thread(read_until_done_and_close, port)
            assert b'data: {"n": 1}' in data

            async def settled(n: int = n) -> bool:
                text = await (await client.get("/metrics")).text()
                counted = sum(statuses(text).values()) == n
                return counted and metrics.value(text, 'llmsvc_router_in_flight{backend="b"}') == 0

            await wait_for(settled, f"request {n} counted and its upstream released")
        text = await (await client.get("/metrics")).text()
        assert statuses(text) == {"200": 3.0}
        assert engine.hits == 3
        assert len(engine.seen_peers) == 1, engine.seen_peers  # one upstream connection


def test_closed_after_done_through_real_processes_is_always_200(
    spawn: Spawn, tmp_path: Path
) -> None:
    """50 streams from a real simulated engine through a real router process."""
    port = free_port()
    engine = spawn(
        "e1", "sim-engine", "--port", str(port), "--model-name", "m", "--time-scale", "0"
    )  # fmt: skip
    engine.wait_http(f"http://{HOST}:{port}/health")
    services = tmp_path / "services.json"
    record = {"name": "e1", "host": HOST, "port": port, "metadata": {"models": ["m"]}}
    services.write_bytes(orjson.dumps([record]))
    _, router = start_router(spawn, None, "--static-services", str(services))
    router_port = int(router.rsplit(":", 1)[1])
    runs = 50
    for _ in range(runs):
        read_until_done_and_close(router_port)
    deadline = time.monotonic() + 10
    while sum((counted := statuses(metrics.scrape(router))).values()) < runs:
        assert time.monotonic() < deadline, counted
        time.sleep(0.05)
    assert counted == {"200": float(runs)}


@pytest.mark.real_engine
@pytest.mark.timeout(300)  # room to wait for real_engine_slot
def test_closed_after_done_from_the_real_llama_server_is_always_200(
    real_engine_slot: None,
    spawn: Spawn,
    tmp_path: Path,
    llama_server_bin: Path,
    smollm2_gguf: Path,
) -> None:
    """The same with the real llama-server behind a real router: 6 short streams (before,
    3 to 5 of 10 were counted 499). A loaded machine makes each take seconds."""
    port = free_port()
    args = [str(llama_server_bin), "-m", str(smollm2_gguf), "--host", HOST, "--port", str(port)]
    server = spawn("llama-server", *args, *SERVER_ARGS, raw=True)
    server.wait_http(f"http://{HOST}:{port}/health", timeout=60)
    services = tmp_path / "services.json"
    record = {"name": "ll", "host": HOST, "port": port, "metadata": {"models": ["m"]}}
    services.write_bytes(orjson.dumps([record]))
    # A busy llama-server answers /health slowly: checks that do not eject it meanwhile.
    slow_checks = ("--health-interval", "5", "--health-timeout", "10")
    _, router = start_router(spawn, None, "--static-services", str(services), *slow_checks)
    router_port = int(router.rsplit(":", 1)[1])
    runs = 6
    for _ in range(runs):
        assert b'"content"' in read_until_done_and_close(router_port, timeout=60)
    wait_until(
        lambda: sum(statuses(metrics.scrape(router)).values()) >= runs,
        timeout=10, what="every stream counted",
    )  # fmt: skip
    assert statuses(metrics.scrape(router)) == {"200": float(runs)}
