"""A starting router: not ready and holding requests until it knows its backends.

Real processes: a registry with a simulated engine registered, then a router fired
at from the first moment its port accepts; and a static backend that comes up
only after the router started.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import orjson
import pytest

from procs import HOST, Spawn, free_port, spawn_sim_engine, start_registry, wait_until

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
FAST = ("--health-interval", "0.5", "--health-timeout", "1", "--registry-sync-interval", "0.5")


def raw_chat() -> bytes:
    body = orjson.dumps(CHAT)
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\n"
        "Content-Type: application/json\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def fire_from_first_accept(port: int, *, loops: int, answers: int) -> list[int]:
    """Statuses of ``loops * answers`` requests, each on a new connection, sent by
    ``loops`` tight loops of connects that start before the port accepts."""
    request = raw_chat()

    async def loop() -> list[int]:
        statuses: list[int] = []
        deadline = time.monotonic() + 30
        while len(statuses) < answers:
            assert time.monotonic() < deadline, "the router never answered"
            try:
                reader, writer = await asyncio.open_connection(HOST, port)
            except OSError:
                await asyncio.sleep(0.001)
                continue
            writer.write(request)
            status_line = await reader.readline()
            await reader.read()
            writer.close()
            if status_line:  # else closed unanswered (a worker starting): try again
                statuses.append(int(status_line.split()[1]))
        return statuses

    results = await asyncio.gather(*(loop() for _ in range(loops)))
    return [status for statuses in results for status in statuses]


@pytest.mark.parametrize("workers", [1, 2])
def test_no_503_from_the_first_accept(spawn: Spawn, workers: int) -> None:
    port = free_port()
    spawn_sim_engine(spawn, "e1", port).wait_http(f"http://{HOST}:{port}/health")
    record = {"name": "e1", "host": HOST, "port": port, "metadata": {"models": ["m"]}}
    _, registry = start_registry(spawn)
    assert httpx.post(f"{registry}/services", json=record).status_code == 201

    router_port = free_port()
    spawn(
        "router", "router", "--port", str(router_port), "--registry-url", registry,
        "--workers", str(workers), *FAST,
    )  # fmt: skip
    statuses = asyncio.run(fire_from_first_accept(router_port, loops=20, answers=5))
    assert statuses.count(503) == 0, statuses
    assert set(statuses) == {200}, statuses


def test_health_is_503_until_ready_then_serves_static_only(spawn: Spawn, tmp_path: Path) -> None:
    """An unreachable registry: not ready for --ready-timeout, then the static services."""
    port = free_port()
    spawn_sim_engine(spawn, "st", port).wait_http(f"http://{HOST}:{port}/health")
    static = tmp_path / "services.json"
    record = {"name": "st", "host": HOST, "port": port, "metadata": {"models": ["m"]}}
    static.write_bytes(orjson.dumps([record]))
    router_port = free_port()
    url = f"http://{HOST}:{router_port}"
    started = time.monotonic()
    router = spawn(
        "router", "router", "--port", str(router_port), "--static-services", str(static),
        "--registry-url", f"http://{HOST}:{free_port()}", "--ready-timeout", "2", *FAST,
    )  # fmt: skip
    starting = router.wait_http(f"{url}/health", status=503)
    assert starting.json()["status"] == "starting"
    assert "registry" in starting.json()["waiting_for"]
    ready = router.wait_http(f"{url}/health")
    assert ready.json()["status"] == "ok"
    assert time.monotonic() - started >= 1.5
    assert httpx.post(f"{url}/v1/chat/completions", json=CHAT).status_code == 200


def test_static_backend_down_at_start_is_routed_to_within_seconds(
    spawn: Spawn, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens yet
    static = tmp_path / "services.json"
    record = {"name": "late", "host": HOST, "port": port, "metadata": {"models": ["m"]}}
    static.write_bytes(orjson.dumps([record]))
    router_port = free_port()
    url = f"http://{HOST}:{router_port}"
    router = spawn(
        "router",
        "router",
        "--port",
        str(router_port),
        "--static-services",
        str(static),
        "--hold-timeout",
        "0",  # refused at once while down (not held): each probe below answers at once
    )  # fmt: skip  (the default --health-interval: 5 s, longer than the 3 s below)
    router.wait_http(f"{url}/health")
    assert httpx.post(f"{url}/v1/chat/completions", json=CHAT).status_code != 200

    spawn_sim_engine(spawn, "late", port).wait_http(f"http://{HOST}:{port}/health")
    up = time.monotonic()

    def routed() -> bool:
        return httpx.post(f"{url}/v1/chat/completions", json=CHAT).status_code == 200

    wait_until(routed, timeout=10, interval=0.1, what="the late backend routed to")
    assert time.monotonic() - up < 3
