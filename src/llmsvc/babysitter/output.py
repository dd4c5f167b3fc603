"""The engine's output: pumped from its pipes into size-rotated files, stderr's tail kept.

The engine writes to two pipes. One task per pipe copies what arrives, line
by line, to ``<log-dir>/<name>.engine.log`` (stdout and stderr interleaved as
they come, so the file reads like a terminal), rotated at ``--log-max-bytes``
into ``.1`` … ``.<log-backups>``; without ``--log-dir`` to the babysitter's
stderr. The last :data:`TAIL_LINES` lines of stderr stay in memory for
``/status`` and for telling why the engine ended. Writes to a local file are
short and bounded, so they run on the loop, as a logging handler's do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import logging.handlers
import sys
from collections import deque
from pathlib import Path

from llmsvc.core.logging import JsonFormatter
from llmsvc.core.rotating import RotatingFile as RotatingFile  # shared with llmsvc up

TAIL_LINES = 50
MAX_LINE = 64 * 1024  # longer lines are cut into pieces of this size


def safe_name(name: str) -> str:
    """``name`` as a file name: characters other than letters, digits and ``._-@`` become ``_``."""
    return "".join(c if c.isalnum() or c in "._-@" else "_" for c in name)


class EngineOutput:
    """Where one babysitter's engines write; shared by every engine life."""

    def __init__(self, *, log_dir: str | None, name: str, max_bytes: int, backups: int) -> None:
        self._file = (
            RotatingFile(
                Path(log_dir) / f"{safe_name(name)}.engine.log",
                max_bytes=max_bytes,
                backups=backups,
            )
            if log_dir
            else None
        )
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)

    @property
    def path(self) -> Path | None:
        return self._file.path if self._file else None

    def start(self, proc: asyncio.subprocess.Process) -> list[asyncio.Task[None]]:
        """Tasks that pump the engine's stdout and stderr until they close (owned by the caller)."""
        self.tail.clear()
        pumps = []
        for stream, keep in ((proc.stdout, False), (proc.stderr, True)):
            if stream is not None:
                pumps.append(asyncio.create_task(self._pump(stream, keep), name="engine-output"))
        return pumps

    async def _pump(self, stream: asyncio.StreamReader, keep: bool) -> None:
        while True:
            try:
                line = await stream.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                line = exc.partial
            except asyncio.LimitOverrunError as exc:
                line = await stream.readexactly(min(exc.consumed, MAX_LINE))
            if not line:
                return
            self._write(line)
            if keep:
                self.tail.append(line.decode(errors="replace").rstrip("\r\n"))

    def _write(self, line: bytes) -> None:
        if self._file is not None:
            self._file.write(line)
        else:
            sys.stderr.buffer.write(line)
            sys.stderr.buffer.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


async def drain_pumps(pumps: list[asyncio.Task[None]], *, timeout: float = 2.0) -> None:
    """Let the pumps read what the ended engine left in its pipes, then stop them."""
    if pumps:
        await asyncio.wait(pumps, timeout=timeout)
    for pump in pumps:
        pump.cancel()
    for pump in pumps:
        with contextlib.suppress(asyncio.CancelledError):
            await pump


def own_log_handler(log_dir: str, name: str, *, max_bytes: int, backups: int) -> logging.Handler:
    """The babysitter's own log beside the engine's: JSON lines, size-rotated."""
    path = Path(log_dir) / f"{safe_name(name)}.babysitter.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
    )
    handler.setFormatter(JsonFormatter())
    return handler
