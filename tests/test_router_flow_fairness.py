"""Fairness and strict priority end to end: a real router with slots in front of a real
simulated engine.

The engine decodes at 40 tokens/s, so a request of ``max_tokens`` tokens holds its
slot for a known time (its *service time*); the router gives the engine a fixed
number of slots (``metadata.max_concurrency`` in the static services file, or
``--backend-concurrency``), so everything beyond waits in the router's queue. The
assertions count turns (which requests finished while another waited, in which
order), with time bounds only as generous backstops: they hold on a slow machine.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from procs import HOST, Spawn, start_router, start_sim_engine

MODEL = "m"
DECODE_TPS = 40
SERVICE_TOKENS = 16  # 0.4 s of decode: one request's turn on a slot
FLOOD_KEY, LIGHT_KEY = "key-flood-0123456789", "key-light-0123456789"
KEYS_YAML = f"""\
- name: flood
  key: {FLOOD_KEY}
- name: light
  key: {LIGHT_KEY}
"""


@dataclass(frozen=True)
class Done:
    """One answered request: when it was sent and answered (monotonic), its status."""

    start: float
    end: float
    status: int
    body: bytes

    @property
    def latency(self) -> float:
        return self.end - self.start


def engine(spawn: Spawn) -> int:
    _, port = start_sim_engine(
        spawn, "engine", "--time-scale", "1", "--decode-tokens-per-s", str(DECODE_TPS),
        "--max-num-seqs", "32", "--decode-slowdown", "0",
    )  # fmt: skip
    return port


def services_file(tmp_path: Path, port: int, metadata: dict[str, Any]) -> str:
    record = {
        "name": "engine",
        "host": HOST,
        "port": port,
        "metadata": {"models": [MODEL], **metadata},
    }
    path = tmp_path / "services.json"
    path.write_bytes(orjson.dumps({"services": [record]}))
    return str(path)


@asynccontextmanager
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=timeout
    ) as client:
        yield client


async def send(
    client: aiohttp.ClientSession,
    url: str,
    *,
    tokens: int = SERVICE_TOKENS,
    headers: dict[str, str] | None = None,
    stream: bool = False,
) -> Done:
    body = {"model": MODEL, "prompt": "hi", "max_tokens": tokens, "stream": stream}
    start = time.monotonic()
    async with client.post(f"{url}/v1/completions", json=body, headers=headers or {}) as resp:
        payload = await resp.read()
        return Done(start, time.monotonic(), resp.status, payload)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def demand(client: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with client.get(f"{url}/demand") as resp:
        assert resp.status == 200, await resp.text()
        view: dict[str, Any] = await resp.json()
        model: dict[str, Any] = view["models"][MODEL]
        return model


async def until(
    check: Callable[[], Awaitable[bool]],
    *,
    what: str,
    timeout: float = 15.0,
    seen: Callable[[], object] = lambda: None,
) -> None:
    """Poll ``check`` until true; the error names ``what`` and the last ``seen()``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {seen()})")


async def test_a_flooding_tenant_does_not_delay_another(spawn: Spawn, tmp_path: Path) -> None:
    """Tenant ``flood`` keeps 20 requests outstanding against 2 slots (18 in the queue);
    tenant ``light`` sends one at a time. With turns between tenants each of light's
    requests waits for about one freed slot, not behind flood's 18."""
    services = services_file(tmp_path, engine(spawn), {"max_concurrency": 2})
    keys = tmp_path / "keys.yaml"
    keys.write_text(KEYS_YAML)
    _, url = start_router(spawn, None, "--static-services", services, "--api-keys-file", str(keys))

    async with session() as client:
        idle = [await send(client, url, headers=bearer(LIGHT_KEY)) for _ in range(3)]
        assert all(d.status == 200 for d in idle), idle
        service = statistics.median(d.latency for d in idle)

        flood_done: list[Done] = []
        stop = asyncio.Event()

        async def flooder() -> None:
            while not stop.is_set():
                flood_done.append(await send(client, url, headers=bearer(FLOOD_KEY)))

        workers = [asyncio.create_task(flooder()) for _ in range(20)]
        try:

            async def queue_built() -> bool:
                return int((await demand(client, url))["queued"]) >= 15

            await until(queue_built, what="flood's requests queued (>= 15)")
            flooded_at = time.monotonic()

            async def light_requests() -> list[Done]:
                return [await send(client, url, headers=bearer(LIGHT_KEY)) for _ in range(5)]

            # Starved (no turns), light would wait behind an endless flood: bounded.
            light = await asyncio.wait_for(light_requests(), 20)

            async def flood_answered() -> bool:
                return len(flood_done) >= 40

            await until(flood_answered, what="40 of flood's requests answered", timeout=30)
        finally:
            stop.set()
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    assert all(d.status == 200 for d in light), [d.body for d in light]
    assert all(d.status == 200 for d in flood_done), {d.status for d in flood_done}
    # Turns: while one of light's requests was in the router, flood's requests finished
    # only on the other slot and for the one turn light waited for (FIFO would finish
    # all 18 queued ahead of it).
    overtaken = [sum(1 for f in flood_done if b.start < f.end < b.end) for b in light]
    assert max(overtaken) <= 6, overtaken
    # Time, generously: light waits about one service time more than on an idle fleet,
    # a small part of what flood's queued requests wait.
    light_wait = [d.latency - service for d in light]
    flood_wait = [d.latency - service for d in flood_done if d.start > flooded_at]
    assert max(light_wait) < service + 2.0, (light_wait, service)
    assert statistics.median(light_wait) < statistics.median(flood_wait) / 3, (
        light_wait,
        statistics.median(flood_wait),
    )


async def test_critical_goes_before_queued_standard(spawn: Spawn, tmp_path: Path) -> None:
    """One slot, held by a long stream; five ``standard`` requests queue, then one
    ``critical``. When the stream ends, the critical one is served first, then the
    standard ones in their order."""
    services = services_file(tmp_path, engine(spawn), {})
    _, url = start_router(spawn, None, "--static-services", services, "--backend-concurrency", "1")

    async with session() as client:
        blocker = await client.post(
            f"{url}/v1/completions",
            json={"model": MODEL, "prompt": "hi", "max_tokens": 4000, "stream": True},
        )
        assert blocker.status == 200
        await blocker.content.readline()  # on the engine: the slot is taken

        order: list[str] = []

        async def named(name: str, priority: str) -> Done:
            done = await send(client, url, tokens=2, headers={"X-Llmsvc-Priority": priority})
            order.append(name)
            return done

        async def wait_queued(n: int) -> None:
            seen: list[dict[str, Any]] = []

            async def check() -> bool:
                seen[:] = [await demand(client, url)]
                return int(seen[0]["queued"]) == n

            await until(check, what=f"{n} requests queued", seen=lambda: (seen, order))

        standard = []
        for i in range(5):  # one at a time: their order in the line is known
            standard.append(asyncio.create_task(named(f"standard-{i}", "standard")))
            await wait_queued(i + 1)
        critical = asyncio.create_task(named("critical", " CRITICAL "))
        await wait_queued(6)
        blocker.close()  # the client leaves: the stream's slot frees
        results = await asyncio.wait_for(asyncio.gather(critical, *standard), 30)

        bad = await send(client, url, headers={"X-Llmsvc-Priority": "urgent"})

    assert all(d.status == 200 for d in results), [d.body for d in results]
    assert order == ["critical", *(f"standard-{i}" for i in range(5))]
    assert bad.status == 400
    error = orjson.loads(bad.body)["error"]
    assert error["code"] == "invalid_priority"
    assert error["param"] == "X-Llmsvc-Priority"
    assert error["type"] == "invalid_request_error"
