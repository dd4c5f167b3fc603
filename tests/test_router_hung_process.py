"""A SIGSTOPped engine process behind a router with every setting at its default: the
requests sent meanwhile are all answered, the engine is out within a few seconds and
back within a few seconds of SIGCONT. Real processes: two simulated engines, a router."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import orjson

from procs import HOST, Spawn, free_port, start_sim_engine, wait_until

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def eligible(url: str, name: str) -> bool:
    services = httpx.get(f"{url}/services").json()["services"]
    return bool(next(s for s in services if s["name"] == name)["eligible"])


async def out_after(url: str, name: str, since: float, limit: float) -> float | None:
    """Seconds after ``since`` when the router's view first has ``name`` not eligible."""
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() - since < limit:
            services = (await client.get(f"{url}/services")).json()["services"]
            if not next(s for s in services if s["name"] == name)["eligible"]:
                return time.monotonic() - since
            await asyncio.sleep(0.05)
    return None


async def hang(url: str, stopped: float) -> tuple[list[int], float | None]:
    """Open-loop load for 4 s while watching the view of ``b``."""
    return await asyncio.gather(
        open_loop(url, seconds=4, every=0.05), out_after(url, "b", stopped, 4)
    )


async def open_loop(url: str, seconds: float, every: float) -> list[int]:
    """A chat request every ``every`` seconds for ``seconds``; their statuses (0: none)."""
    async with httpx.AsyncClient(timeout=8) as client:

        async def one() -> int:
            try:
                return (await client.post(f"{url}/v1/chat/completions", json=CHAT)).status_code
            except httpx.HTTPError:
                return 0

        tasks = []
        for _ in range(int(seconds / every)):
            tasks.append(asyncio.create_task(one()))
            await asyncio.sleep(every)
        return list(await asyncio.gather(*tasks))


def test_a_sigstopped_engine_costs_no_request_with_the_defaults(
    spawn: Spawn, tmp_path: Path
) -> None:
    a, a_port = start_sim_engine(spawn, "a")
    b, b_port = start_sim_engine(spawn, "b")
    static = tmp_path / "services.json"
    records = [
        {"name": name, "host": HOST, "port": port, "metadata": {"models": ["m"]}}
        for name, port in (("a", a_port), ("b", b_port))
    ]
    static.write_bytes(orjson.dumps(records))
    port = free_port()
    url = f"http://{HOST}:{port}"
    router = spawn("router", "router", "--port", str(port), "--static-services", str(static))
    router.wait_http(f"{url}/health")

    b.signal(signal.SIGSTOP)
    try:
        statuses, out = asyncio.run(hang(url, time.monotonic()))
    finally:
        b.signal(signal.SIGCONT)
    assert statuses == [200] * len(statuses), sorted(set(statuses))
    # --suspect-after 0.5 s + --health-timeout 1 s after the first request b held.
    assert out is not None and out < 3, out
    resumed = time.monotonic()
    wait_until(lambda: eligible(url, "b"), timeout=10, interval=0.1, what="b back")
    assert time.monotonic() - resumed < 4  # re-checked every 2 s while out
    assert a.alive() and router.alive()
