"""The batch benchmark's processes: the flow benchmark's fleet and router, and ``llmsvc batch``.

The engines and the router are :mod:`benchmarks.flow.fleet`'s (fixed timing, so the
capacity is known; the router with each engine's slots and its queue, as ``llmsvc up``
configures flow control through the babysitters' ``max_concurrency``). The router gets
``--batch-url`` and ``--batch-token`` and the batch service ``--router-url`` and
``--token``, the pair ``llmsvc up`` sets up: a client uploads and creates its batch
through the router, and the lines come back through it at priority ``batch``.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import aiohttp
from benchmarks.common.ports import free_port
from benchmarks.common.processes import Child, StartFailed, spawn_llmsvc
from benchmarks.flow.fleet import HOST, START_TIMEOUT_S, Fleet, Router, RouterConfig

TOKEN = "batch-bench-shared-token-0123456789"


@dataclass(slots=True)
class BatchService:
    """``llmsvc batch`` on a port of its own, its data in ``data_dir`` (an async context)."""

    port: int
    router_url: str
    data_dir: Path
    log_dir: Path
    extra: tuple[str, ...] = ()
    process: Child | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"}

    async def __aenter__(self) -> BatchService:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        args = [
            "batch", "--host", HOST, "--port", str(self.port), "--data-dir", str(self.data_dir),
            "--router-url", self.router_url, "--token", TOKEN, "--log-level", "warning",
            *self.extra,
        ]  # fmt: skip
        self.process = await spawn_llmsvc("batch", args, self.log_dir)
        try:
            await self._wait_healthy()
        except BaseException:
            await self.process.stop(5.0)
            raise
        return self

    async def _wait_healthy(self) -> None:
        assert self.process is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout, headers=self.headers) as http:
            while loop.time() < deadline:
                if self.process.process.returncode is not None:
                    raise StartFailed(f"batch exited:\n{self.process.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(f"{self.url}/health") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise StartFailed(f"batch: {self.url}/health not healthy after {START_TIMEOUT_S:g}s")

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.process is not None:
            await self.process.stop(10.0)


@dataclass(slots=True)
class Stack:
    """A fresh router (with ``--batch-url``) and batch service in front of ``fleet``."""

    fleet: Fleet
    log_dir: Path
    queue_size: int
    queue_timeout: float
    batch_extra: tuple[str, ...] = ()
    router: Router | None = None
    batch: BatchService | None = None
    _exits: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    async def __aenter__(self) -> Stack:
        batch_port = free_port()
        config = RouterConfig(
            flow=True, queue_size=self.queue_size, queue_timeout=self.queue_timeout,
            extra=("--batch-url", f"http://{HOST}:{batch_port}", "--batch-token", TOKEN),
        )  # fmt: skip
        try:
            self.router = await self._exits.enter_async_context(
                self.fleet.router(config, self.log_dir)
            )
            service = BatchService(
                batch_port, self.router.url, self.log_dir / "batch-data", self.log_dir,
                self.batch_extra,
            )  # fmt: skip
            self.batch = await self._exits.enter_async_context(service)
        except BaseException:
            await self._exits.aclose()
            raise
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._exits.aclose()
