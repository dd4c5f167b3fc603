"""One mode's cold-start cycles: registry, router and a babysitter with standby, for real.

Real processes on 127.0.0.1: a registry with a write token, a router reading it, and
one babysitter of a simulated engine with ``--idle-timeout`` and ``--standby sleep|stop``
whose engine takes ``--wake-delay`` to wake and ``--startup-delay`` to start. Each cycle:
wait until the engine is in standby (the babysitter says so and the router no longer has
a ready backend), send one streamed request through the router and time its first event
(the client's TTFT, held while the router wakes the engine), read what the engine's wake
took from the babysitter (``/status`` ``standby.last_wake_seconds``: ``POST /wake`` to
ready, the start included with ``stop``), then send the same request warm (the request's
own TTFT). The hold overhead is what the router and the registry add:
``cold TTFT - engine wake - warm TTFT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from benchmarks.common.ports import HOST, free_port
from benchmarks.common.processes import Child, StartFailed, spawn_llmsvc, wait_healthy

TOKEN = "coldstart-bench-token"
MODEL = "m"
BODY = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Say hello."}],
    "max_tokens": 8,
    "stream": True,
}
START_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Settings:
    cycles: int = 5
    idle_timeout: float = 1.0
    wake_delay: float = 2.0
    startup_delay: float = 2.0
    hold_timeout: float = 60.0
    babysitter_args: tuple[str, ...] = ()  # more babysitter flags (its health interval, ...)


@dataclass(frozen=True)
class Cycle:
    """One cold request and the warm one after it."""

    cold_ttft_s: float  # the client's time to the first event, through the hold and the wake
    engine_wake_s: float  # the babysitter's POST /wake to ready
    warm_ttft_s: float  # the same request once the engine is up
    standby_wait_s: float  # from the previous request to standby (idle timeout + detection)

    @property
    def overhead_s(self) -> float:
        """What the router and the registry add to the engine's wake and the request."""
        return self.cold_ttft_s - self.engine_wake_s - self.warm_ttft_s

    def as_dict(self) -> dict[str, float]:
        return asdict(self) | {"overhead_s": round(self.overhead_s, 4)}


class Stack:
    """The processes of one mode, and the HTTP client that drives them."""

    def __init__(self, http: aiohttp.ClientSession, work: Path) -> None:
        self.http = http
        self.work = work
        self.children: list[Child] = []
        self.router = ""
        self.sitter = ""

    async def start(self, mode: str, settings: Settings) -> None:
        registry_port, router_port, engine_port = free_port(), free_port(), free_port(pair=True)
        registry = f"http://{HOST}:{registry_port}"
        self.router = f"http://{HOST}:{router_port}"
        self.sitter = f"http://{HOST}:{engine_port + 1}"  # the babysitter's API: port + 1
        reg = await self._spawn(
            "registry", "registry", "--port", str(registry_port), "--token", TOKEN
        )
        await wait_healthy(self.http, reg, f"{registry}/health", timeout=START_TIMEOUT_S)
        router = await self._spawn(
            "router", "router", "--port", str(router_port), "--registry-url", registry,
            "--registry-token", TOKEN, "--hold-timeout", str(settings.hold_timeout),
        )  # fmt: skip
        await wait_healthy(self.http, router, f"{self.router}/health", timeout=START_TIMEOUT_S)
        sitter = await self._spawn(
            f"babysitter-{mode}", "babysitter", "--engine", "sim", "--model", MODEL,
            "--name", f"coldstart-{mode}", "--port", str(engine_port), "--registry", registry,
            "--registry-token", TOKEN, "--idle-timeout", str(settings.idle_timeout),
            "--standby", mode, *settings.babysitter_args, "--",
            "--wake-delay", str(settings.wake_delay),
            "--startup-delay", str(settings.startup_delay),
        )  # fmt: skip
        await wait_healthy(self.http, sitter, f"{self.sitter}/health", timeout=START_TIMEOUT_S)
        await self.until(lambda: self._ready(1), "the engine's first start")

    async def _spawn(self, name: str, *args: str) -> Child:
        child = await spawn_llmsvc(name, list(args), self.work)
        self.children.append(child)
        return child

    async def stop(self) -> None:
        for child in reversed(self.children):
            await child.stop()

    async def status(self) -> dict[str, Any]:
        async with self.http.get(f"{self.sitter}/status") as resp:
            resp.raise_for_status()
            data: dict[str, Any] = orjson.loads(await resp.read())
            return data

    async def _ready(self, count: int) -> bool:
        """Whether the router's ``/demand`` shows ``count`` ready backends of the model."""
        async with self.http.get(f"{self.router}/demand") as resp:
            model = orjson.loads(await resp.read())["models"].get(MODEL)
        return model is not None and model.get("ready") == count

    async def _in_standby(self) -> bool:
        return (await self.status())["state"] == "standby" and await self._ready(0)

    async def until(self, check: Any, what: str, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not await check():
            if time.monotonic() > deadline:
                logs = "\n".join(c.log_tail(1500) for c in self.children)
                raise StartFailed(f"timed out waiting for {what}:\n{logs}")
            await asyncio.sleep(0.02)

    async def ttft(self) -> float:
        """One streamed request through the router: seconds to its first data event (a held
        stream's comment lines are not one); the rest is read to its end."""
        started = time.perf_counter()
        first: float | None = None
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        async with self.http.post(
            f"{self.router}/v1/chat/completions", json=BODY, timeout=timeout
        ) as resp:
            if resp.status != 200:
                raise StartFailed(f"the request got {resp.status}: {await resp.text()}")
            async for line in resp.content:
                if first is None and line.startswith(b"data: {"):
                    first = time.perf_counter() - started
                if line.startswith(b"data: {") and b'"error"' in line:
                    raise StartFailed(f"the stream ended with {line.decode()}")
        if first is None:
            raise StartFailed("the stream had no data event")
        return first

    async def cycle(self) -> Cycle:
        before = await self.status()
        wakes = (before.get("standby") or {}).get("wakes", 0)
        waited = time.perf_counter()
        await self.until(self._in_standby, "standby")
        standby_wait = time.perf_counter() - waited
        cold = await self.ttft()
        status = await self.status()
        standby = status.get("standby") or {}
        if standby.get("wakes", 0) <= wakes or standby.get("last_wake_seconds") is None:
            raise StartFailed(f"the babysitter counted no new wake: {status}")
        warm = await self.ttft()
        return Cycle(
            cold_ttft_s=round(cold, 4),
            engine_wake_s=float(standby["last_wake_seconds"]),
            warm_ttft_s=round(warm, 4),
            standby_wait_s=round(standby_wait, 3),
        )


@contextlib.asynccontextmanager
async def stack(mode: str, settings: Settings, work: Path) -> AsyncIterator[Stack]:
    """The processes of one mode, logging into ``work`` (which exists), stopped after."""
    async with aiohttp.ClientSession() as http:
        running = Stack(http, work)
        try:
            await running.start(mode, settings)
            yield running
        finally:
            await running.stop()


async def run_mode(mode: str, settings: Settings, work: Path) -> list[Cycle]:
    """``settings.cycles`` cold starts of one ``--standby`` mode; logs in ``work/<mode>``
    (made beforehand)."""
    async with stack(mode, settings, work / mode) as running:
        return [await running.cycle() for _ in range(settings.cycles)]
