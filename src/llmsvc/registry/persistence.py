"""The state file: every record as JSON, written atomically after changes.

Format (``version`` 1)::

    {"version": 1, "index": 42, "services": [<ServiceRecord>, ...]}

A write goes to a temporary file in the same directory, is flushed and
fsynced, then ``os.replace``-d over the old file (and the directory fsynced),
so a reader or a crash sees the old state or the new one, never half of one.
The file is a few KB: it is written synchronously on the event loop, which
takes well under a millisecond and needs no thread. Bursts of changes are
coalesced by :class:`StateWriter`, one task woken by the change index.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Literal

import orjson
from pydantic import BaseModel, Field, ValidationError

from llmsvc.core.jsonio import validation_message
from llmsvc.core.records import ServiceRecord
from llmsvc.registry.store import HTTP, ServiceStore

log = logging.getLogger("llmsvc.registry.state")


class StateFileError(Exception):
    """The state file cannot be read or written; the message is one line naming it."""


class SavedState(BaseModel):
    version: Literal[1] = 1
    index: int = Field(default=0, ge=0)
    services: list[ServiceRecord] = Field(default_factory=list)


def load_state(path: Path) -> SavedState | None:
    """The saved state, None when there is no file yet; :class:`StateFileError` if unusable."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateFileError(f"state file {path}: cannot read it: {exc.strerror}") from None
    if not raw.strip():
        raise StateFileError(f"state file {path}: it is empty (expected a JSON object)")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise StateFileError(f"state file {path}: not valid JSON: {exc}") from None
    try:
        return SavedState.model_validate(data)
    except ValidationError as exc:
        message, _ = validation_message(exc)
        raise StateFileError(f"state file {path}: {message}") from None


def save_state(path: Path, state: SavedState) -> None:
    """Write ``state`` atomically; :class:`StateFileError` when it cannot be written."""
    directory = path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise StateFileError(f"state file {path}: cannot write it: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(state.model_dump_json(indent=1).encode())
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StateFileError(f"state file {path}: cannot write it: {exc.strerror}") from None
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class StateWriter:
    """Keeps the state file in step with the store, one write per burst of changes."""

    def __init__(
        self, store: ServiceStore, path: Path, *, debounce: float = 0.05, retry: float = 1.0
    ) -> None:
        self._store = store
        self.path = path
        self._debounce = debounce
        self._retry = retry
        self.saved_index = -1

    def save_now(self) -> None:
        # Only HTTP registrations: records of another source come back from it after a restart.
        index, records = self._store.snapshot(source=HTTP)
        save_state(self.path, SavedState(index=index, services=records))
        self.saved_index = index

    def flush(self) -> None:
        """Write if anything changed since the last write (at shutdown)."""
        if self.saved_index != self._store.index:
            self.save_now()

    async def run(self) -> None:
        while True:
            await self._store.wait_for_change(self.saved_index, None, stop_at_close=False)
            await asyncio.sleep(self._debounce)
            try:
                self.save_now()
            except StateFileError as exc:
                log.error("%s; retrying in %.1fs", exc, self._retry)
                await asyncio.sleep(self._retry)
