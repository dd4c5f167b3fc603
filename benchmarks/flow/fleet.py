"""The fleet: simulated engines with a known capacity, and a fresh router in front per phase.

The engines' timing is fixed (no jitter, no decode slowdown, no prefix cache, the
``independent`` scheduler: each sequence on its own clock), so a request holds one of an
engine's ``--max-num-seqs`` slots for a known time: prefill of the prompt, then
``max_tokens - 1`` decode steps. That makes the capacity a number the harness
can state (:attr:`EngineTiming.capacity_rps`) before it measures it.

Flow control ON: each engine's record in the router's static services file
says ``metadata.max_concurrency`` (what a babysitter advertises), so the
router sends an engine no more than its slots and queues the rest itself.
OFF: no slots anywhere (the router's behaviour before issue 13): every request
goes to an engine at once and waits in the engine's own FIFO queue.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import aiohttp
import orjson
from benchmarks.common.ports import free_port
from benchmarks.common.processes import Child, spawn_llmsvc, wait_healthy

HOST = "127.0.0.1"
MODEL = "flow-model"
START_TIMEOUT_S = 40.0


@dataclass(frozen=True, slots=True)
class EngineTiming:
    """One simulated engine's slots and speed; a request's prompt and answer lengths."""

    slots: int = 4
    prefill_tokens_per_s: float = 100.0
    decode_tokens_per_s: float = 20.0
    prompt_tokens: int = 30
    max_tokens: int = 12

    @property
    def ttft_s(self) -> float:
        """Time to first token on an idle engine (the prefill)."""
        return self.prompt_tokens / self.prefill_tokens_per_s

    @property
    def service_s(self) -> float:
        """How long a request holds a slot: its prefill and ``max_tokens - 1`` decode steps."""
        return self.ttft_s + (self.max_tokens - 1) / self.decode_tokens_per_s

    def capacity_rps(self, engines: int) -> float:
        """Requests per second the fleet finishes when every slot is always busy."""
        return engines * self.slots / self.service_s

    def flags(self) -> list[str]:
        return [
            "--scheduler", "independent", "--decode-slowdown", "0", "--jitter", "0",
            "--max-num-seqs", str(self.slots),
            "--prefill-tokens-per-s", str(self.prefill_tokens_per_s),
            "--decode-tokens-per-s", str(self.decode_tokens_per_s),
            "--default-max-tokens", str(self.max_tokens),
            "--prefix-cache-tokens", "0",  # every prompt prefilled in full, in every phase
        ]  # fmt: skip


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """How the router of a phase runs: with slots and a queue (``flow``) or without."""

    flow: bool
    queue_size: int = 64
    queue_timeout: float = 10.0
    keys_file: Path | None = None
    extra: tuple[str, ...] = ()

    def flags(self) -> list[str]:
        flags = ["--first-byte-timeout", "120", "--log-level", "warning", *self.extra]
        if self.flow:
            flags += ["--queue-size", str(self.queue_size)]
            flags += ["--queue-timeout", f"{self.queue_timeout:g}"]
        if self.keys_file is not None:
            flags += ["--api-keys-file", str(self.keys_file)]
        return flags


@dataclass(slots=True)
class Fleet:
    """``engines`` simulated engines, started once for the whole run; a router per phase.

    The engines keep nothing between phases that matters here (each phase's traffic is
    answered in full before the next, and they have no prefix cache: the overload phases
    send the same prompts); only the router's settings change, and each phase gets a fresh router
    (:meth:`router`), so no queue, latency estimate or connection carries over.
    """

    engines: int
    timing: EngineTiming
    log_dir: Path
    ports: list[int] = field(default_factory=list)
    processes: list[Child] = field(default_factory=list)

    async def __aenter__(self) -> Fleet:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.ports = [free_port() for _ in range(self.engines)]
        try:
            for i, port in enumerate(self.ports):
                args = ["sim-engine", "--port", str(port), "--model-name", MODEL, "--seed", str(i)]
                args += ["--engine-id", f"engine-{i}", "--log-level", "warning"]
                child = await spawn_llmsvc(f"engine-{i}", args + self.timing.flags(), self.log_dir)
                self.processes.append(child)
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
                await asyncio.gather(
                    *(
                        wait_healthy(
                            http,
                            process,
                            f"http://{HOST}:{port}/health",
                            timeout=START_TIMEOUT_S,
                            interval=0.1,
                        )
                        for process, port in zip(self.processes, self.ports, strict=True)
                    )
                )
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def stop(self) -> None:
        await asyncio.gather(*(p.stop(5.0) for p in self.processes))

    def router(self, config: RouterConfig, log_dir: Path) -> Router:
        return Router(self, config, log_dir)


@dataclass(slots=True)
class Router:
    """The router of one phase in front of the fleet's engines (an async context)."""

    fleet: Fleet
    config: RouterConfig
    log_dir: Path
    url: str = ""
    process: Child | None = None

    @property
    def log(self) -> Path:
        return self.log_dir / "router.log"

    async def __aenter__(self) -> Router:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        services = []
        for i, port in enumerate(self.fleet.ports):
            metadata: dict[str, object] = {"models": [MODEL]}
            if self.config.flow:
                metadata["max_concurrency"] = self.fleet.timing.slots
            record = {"name": f"engine-{i}", "host": HOST, "port": port, "metadata": metadata}
            services.append(record)
        services_file = self.log_dir / "services.json"
        services_file.write_bytes(orjson.dumps({"services": services}))
        port = free_port()
        args = ["router", "--port", str(port), "--static-services", str(services_file)]
        self.process = await spawn_llmsvc("router", args + self.config.flags(), self.log_dir)
        self.url = f"http://{HOST}:{port}"
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
                await wait_healthy(
                    http,
                    self.process,
                    f"{self.url}/health",
                    backends=len(services),
                    timeout=START_TIMEOUT_S,
                    interval=0.1,
                )
        except BaseException:
            await self.process.stop(5.0)
            raise
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.process is not None:
            await self.process.stop(5.0)
