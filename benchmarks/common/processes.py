"""The harnesses' processes: each in its own process group, logging to a file.

A proxy under test may start workers or children of its own; its own process
group lets :func:`stop` end all of them, and lets the harness count their CPU.
:func:`start`/:func:`stop` are for the synchronous harnesses (``subprocess``),
:func:`spawn` and :class:`Child` for the asyncio ones (the routing, scale and flow
studies), with :func:`spawn_llmsvc` and :func:`wait_healthy`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson


def start(
    command: list[str], log: Path, env: tuple[tuple[str, str], ...] = ()
) -> subprocess.Popen[bytes]:
    """Start ``command`` in a new session (its own group), output appended to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **dict(env)},
        )


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM the process's whole group, then SIGKILL after 10 s."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def last_line(log: Path, limit: int = 300) -> str:
    """The last line of a log that says something (a crashed process's reason)."""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:limit] if lines else "(empty log)"


@dataclass
class Child:
    """A process started by :func:`spawn`, with its log."""

    name: str
    process: asyncio.subprocess.Process
    log_path: Path
    ports: list[int] = field(default_factory=list)  # the ports it listens on, when it says

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    async def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()


async def spawn(name: str, *argv: str, log_dir: Path, stdout_pipe: bool = False) -> Child:
    """Start ``argv`` in its own session, output to ``log_dir/<name>.log`` (stdout piped
    to the caller instead with ``stdout_pipe``)."""
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log:  # noqa: ASYNC230 - a local file, opened once per child
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if stdout_pipe else log,
            stderr=log,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    return Child(name, process, log_path)


class StartFailed(Exception):
    """A process exited or did not become healthy in time (the message has its log's tail)."""


async def spawn_llmsvc(name: str, args: list[str], log_dir: Path) -> Child:
    """``python -m llmsvc *args`` (this interpreter's llmsvc) as :func:`spawn` does."""
    return await spawn(name, sys.executable, "-m", "llmsvc", *args, log_dir=log_dir)


async def wait_healthy(
    http: aiohttp.ClientSession,
    process: Child,
    url: str,
    *,
    timeout: float,
    backends: int | None = None,
    interval: float = 0.05,
) -> None:
    """Poll ``url`` until 200 (and, for a router, ``backends`` healthy backends);
    :class:`StartFailed` if the process exits or ``timeout`` seconds pass."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if process.process.returncode is not None:
            raise StartFailed(f"{process.name} exited:\n{process.log_tail()}")
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with http.get(url) as resp:
                if resp.status == 200:
                    body = orjson.loads(await resp.read())
                    if backends is None or body.get("healthy_backends") == backends:
                        return
        await asyncio.sleep(interval)
    raise StartFailed(f"{process.name}: {url} not healthy after {timeout:g}s")
