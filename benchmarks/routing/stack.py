"""The processes of one run: N simulated engines and one or more routers in front of them.

Engines and routers are real ``llmsvc`` subprocesses on 127.0.0.1, started
fresh for every run (so every strategy starts with cold prefix caches) and
stopped with SIGTERM (SIGKILL after a grace period). The routers learn the
engines from one static services file and run with the same flags: replicas,
as the Helm chart runs two, each with only its own view of what it sent.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import aiohttp
import orjson
from benchmarks.common.ports import free_port
from benchmarks.common.processes import Child, StartFailed, spawn_llmsvc, wait_healthy

from .config import MODEL, EngineProfile

HOST = "127.0.0.1"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0


class StrategyUnavailable(Exception):
    """The router refused the strategy (this version does not implement it)."""


def parse_strategy(label: str) -> tuple[str, list[str]]:
    """``prefix_affinity+hash-balance-factor=0.1`` -> the strategy and its router flags."""
    name, *options = label.split("+")
    flags: list[str] = []
    for option in options:
        flag, _, value = option.partition("=")
        flags += [f"--{flag}", value]
    return name, flags


@dataclass(slots=True)
class Stack:
    """One simulated engine per profile of ``profiles``, behind ``routers`` routers using
    ``strategy``."""

    profiles: Sequence[EngineProfile]
    strategy: str
    log_dir: Path
    routers: int = 1
    engine_urls: list[str] = field(default_factory=list)
    router_urls: list[str] = field(default_factory=list)
    processes: list[Child] = field(default_factory=list)

    @property
    def engines(self) -> int:
        return len(self.profiles)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    async def __aenter__(self) -> Stack:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
                await self._start_engines(http)
                await self._start_router(http)
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _start_engines(self, http: aiohttp.ClientSession) -> None:
        ports = [free_port() for _ in range(self.engines)]
        for i, (port, profile) in enumerate(zip(ports, self.profiles, strict=True)):
            args = ["sim-engine", "--port", str(port), "--model-name", MODEL]
            args += ["--engine-id", f"engine-{i}", "--log-level", "warning", *profile.flags()]
            self.processes.append(await spawn_llmsvc(f"engine-{i}", args, self.log_dir))
        self.engine_urls = [f"http://{HOST}:{port}" for port in ports]
        await asyncio.gather(
            *(
                wait_healthy(http, process, f"{url}/health", timeout=START_TIMEOUT_S)
                for process, url in zip(self.processes, self.engine_urls, strict=True)
            )
        )

    async def _start_router(self, http: aiohttp.ClientSession) -> None:
        services = [
            {"name": f"engine-{i}", "host": HOST, "port": int(url.rsplit(":", 1)[1]),
             "metadata": {"models": [MODEL]}}
            for i, url in enumerate(self.engine_urls)
        ]  # fmt: skip
        services_file = self.log_dir / "services.json"
        services_file.write_bytes(orjson.dumps({"services": services}))
        name, options = parse_strategy(self.strategy)
        ports = [free_port() for _ in range(self.routers)]
        routers: list[Child] = []
        for i, port in enumerate(ports):
            args = ["router", "--port", str(port), "--strategy", name, *options]
            args += ["--static-services", str(services_file), "--log-level", "warning"]
            args += self.profiles[0].router_flags(name)
            label = "router" if self.routers == 1 else f"router-{i}"
            routers.append(await spawn_llmsvc(label, args, self.log_dir))
        self.processes += routers
        self.router_urls = [f"http://{HOST}:{port}" for port in ports]
        try:
            await asyncio.gather(
                *(
                    wait_healthy(
                        http, router, f"{url}/health", backends=self.engines,
                        timeout=START_TIMEOUT_S,
                    )
                    for router, url in zip(routers, self.router_urls, strict=True)
                )
            )  # fmt: skip
        except StartFailed as exc:
            if any("not implemented" in router.log_tail() for router in routers):
                raise StrategyUnavailable(routers[0].log_tail(300).strip()) from exc
            raise

    async def stop(self) -> None:
        await asyncio.gather(*(p.stop(STOP_TIMEOUT_S) for p in reversed(self.processes)))


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return (total - idle) / ticks, total / ticks
