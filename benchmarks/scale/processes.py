"""The study's child processes: start, wait until they answer, read their memory, stop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path

import aiohttp
from benchmarks.common.processes import Child, spawn

HERE = Path(__file__).resolve().parent
BACKEND = HERE.parent / "common" / "backend.py"  # the stand-in backend, on many ports


class Children:
    """Every process the study started; all stopped (newest first) by :meth:`stop_all`."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    async def start(self, name: str, *argv: str, stdout_pipe: bool = False) -> Child:
        child = await spawn(name, *argv, log_dir=self.log_dir, stdout_pipe=stdout_pipe)
        self.children.append(child)
        return child

    async def llmsvc(self, name: str, *args: str) -> Child:
        return await self.start(name, sys.executable, "-m", "llmsvc", *args)

    async def listener(self, count: int) -> tuple[Child, list[int]]:
        """The many-port backend process and its ports."""
        child = await self.start(
            "listener", sys.executable, str(BACKEND), "--count", str(count),
            "--model", "scale-model", stdout_pipe=True,
        )  # fmt: skip
        assert child.process.stdout is not None
        try:
            line = await asyncio.wait_for(child.process.stdout.readline(), 60)
        except TimeoutError:
            raise RuntimeError(f"listener did not start:\n{child.log_tail()}") from None
        if not line:
            raise RuntimeError(f"listener exited:\n{child.log_tail()}")
        child.ports = json.loads(line)["ports"]
        return child, child.ports

    async def stop(self, child: Child) -> None:
        await child.stop()
        self.children.remove(child)

    async def stop_all(self) -> None:
        for child in reversed(self.children):
            await child.stop()
        self.children.clear()


async def wait_http(
    session: aiohttp.ClientSession, child: Child, url: str, *, timeout: float = 30.0
) -> None:
    """Poll ``url`` until it answers 200; fail with the child's log tail otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.process.returncode is not None:
            raise RuntimeError(f"{child.name} exited:\n{child.log_tail()}")
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{child.name}: {url} not ready after {timeout}s:\n{child.log_tail()}")
