"""A hung engine is killed within seconds with the default settings; a busy one is not.

Both babysitters here run with every default (``--health-interval 1``,
``--health-timeout 1``, ``--hung-after 3``, ``--stop-timeout 30``), unlike the
other tests' fast flags: the defaults are what is tested. The seconds from
SIGSTOP to the kill are printed (``-s`` shows them; docs/babysitter.md quotes
them as measured); the bound asserted is a generous correctness bound.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx

from procs import Proc, Spawn, free_port, pid_alive, status, wait_until

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 60}


def _default_babysitter(spawn: Spawn, *engine_args: str) -> tuple[Proc, str, str]:
    """A babysitter of a sim engine with default settings: (process, engine URL, API URL)."""
    port = free_port(pair=True)
    proc = spawn("babysitter", "babysitter", "--port", str(port), "--engine", "sim",
                 "--model", "m", "--", *engine_args)  # fmt: skip
    api = f"http://127.0.0.1:{port + 1}"
    proc.wait_http(api + "/health", timeout=30)
    return proc, f"http://127.0.0.1:{port}", api


def test_a_stopped_engine_is_killed_as_hung_within_seconds(spawn: Spawn) -> None:
    proc, _, api = _default_babysitter(spawn)
    engine = status(api)["pid"]
    stopped_at = time.time()
    os.kill(engine, signal.SIGSTOP)  # alive, but answers nothing
    try:
        st = wait_until(lambda: (s := status(api))["last_exit"] and s, timeout=20, what="killed")
    finally:
        if pid_alive(engine):
            os.kill(engine, signal.SIGKILL)
    took = st["last_exit"]["at"] - stopped_at
    print(f"SIGSTOP -> Hung kill with default settings: {took:.2f} s")
    assert st["last_exit"]["reason"] == "Hung"
    assert took < 15, proc.log()
    assert "failed 3 health checks in a row" in proc.log()


def test_a_busy_engine_is_not_taken_for_hung(spawn: Spawn) -> None:
    _, engine, api = _default_babysitter(spawn)
    answers = asyncio.run(_load(engine, requests=96, concurrency=64))
    assert answers == [200] * 96
    st = status(api)
    assert (st["restarts"], st["last_exit"], st["state"]) == (0, None, "ready")


async def _load(engine: str, *, requests: int, concurrency: int) -> list[int]:
    """``requests`` chat requests to the engine itself, ``concurrency`` at a time."""
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=engine, timeout=120, limits=limits) as client:

        async def one() -> int:
            async with gate:
                resp = await client.post("/v1/chat/completions", json=CHAT)
                return resp.status_code

        return list(await asyncio.gather(*(one() for _ in range(requests))))
