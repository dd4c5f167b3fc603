"""The state file: every record as JSON, written atomically after changes.

Format (``version`` 1)::

    {"version": 1, "index": 42, "services": [<ServiceRecord>, ...],
     "leases": {"<name>": "<sha256 hex of its lease>", ...},
     "maintenance": [<MaintenanceEntry>, ...]}

``leases`` holds digests only, never a lease (:mod:`.leases`); a file written
before leases existed has none, and its records may be taken by the next
registration of their name. ``maintenance`` holds the HTTP maintenance entries
(those of Kubernetes come back from it); a file written before them has none.

A write goes to a temporary file in the same directory, is flushed and
fsynced, then ``os.replace``-d over the old file (and the directory fsynced),
so a reader or a crash sees the old state or the new one, never half of one.
Before the new file replaces it, the old one becomes the previous generation,
``<name>.prev`` (a hard link renamed over the last one, so the state file itself
is never missing): a state file damaged anyway (a disk, a person, a copy cut
short) is then recovered from it at start by :func:`load_or_recover`, which
keeps the damaged file aside as ``<name>.corrupt-<UTC time>`` and logs what
was lost. When the previous generation is unusable too, the registry refuses to
start (exit 1, one line) rather than start empty and forget every engine.
The file is a few KB: it is written synchronously on the event loop, which
takes well under a millisecond and needs no thread. Bursts of changes are
coalesced by :class:`StateWriter`, one task woken by the change index.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Literal

import orjson
from pydantic import BaseModel, Field, ValidationError, field_validator

from llmsvc.core.jsonio import validation_message
from llmsvc.core.maintenance import MaintenanceEntry
from llmsvc.core.records import ServiceRecord
from llmsvc.registry.leases import DIGEST, LeaseBook
from llmsvc.registry.maintenance import HTTP as HTTP_ENTRIES
from llmsvc.registry.maintenance import MaintenanceBook
from llmsvc.registry.store import HTTP, ServiceStore

log = logging.getLogger("llmsvc.registry.state")


class StateFileError(Exception):
    """The state file cannot be read or written; the message is one line naming it."""


class CorruptStateFile(StateFileError):
    """The state file was read but holds no valid state (empty, not JSON, invalid)."""


class SavedState(BaseModel):
    version: Literal[1] = 1
    index: int = Field(default=0, ge=0)
    services: list[ServiceRecord] = Field(default_factory=list)
    leases: dict[str, str] = Field(
        default_factory=dict, description="Name -> SHA-256 hex of its lease."
    )
    maintenance: list[MaintenanceEntry] = Field(
        default_factory=list, description="The HTTP maintenance entries."
    )

    @field_validator("leases")
    @classmethod
    def _digests_only(cls, value: dict[str, str]) -> dict[str, str]:
        for name, known in value.items():
            if not DIGEST.fullmatch(known):
                raise ValueError(f"leases[{name!r}] is not a SHA-256 hex digest")
        return value


def load_state(path: Path) -> SavedState | None:
    """The saved state, None when there is no file yet; :class:`StateFileError` if unusable."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateFileError(f"state file {path}: cannot read it: {exc.strerror}") from None
    if not raw.strip():
        raise CorruptStateFile(f"state file {path}: it is empty (expected a JSON object)")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CorruptStateFile(f"state file {path}: not valid JSON: {exc}") from None
    try:
        return SavedState.model_validate(data)
    except ValidationError as exc:
        message, _ = validation_message(exc)
        raise CorruptStateFile(f"state file {path}: {message}") from None


def previous_generation(path: Path) -> Path:
    """Where the state file's previous generation is kept: ``<name>.prev`` beside it."""
    return path.with_name(path.name + ".prev")


def load_or_recover(path: Path) -> SavedState | None:
    """:func:`load_state`, or the previous generation when the state file is corrupt.

    The corrupt file is renamed ``<name>.corrupt-<UTC time>`` (the next write would
    replace it) and a warning names what was loaded and that later changes are lost.
    :class:`StateFileError` when the file cannot be read, or it is corrupt and its
    previous generation is missing or corrupt too (the corrupt file is left alone).
    """
    try:
        return load_state(path)
    except CorruptStateFile as exc:
        problem = exc
    prev = previous_generation(path)
    try:
        saved = load_state(prev)
    except StateFileError as exc:
        raise StateFileError(f"{problem}; its previous generation is unusable too: {exc}") from None
    if saved is None:
        raise StateFileError(f"{problem}; there is no previous generation ({prev})") from None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    try:
        written = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(prev.stat().st_mtime))
        os.replace(path, aside)
    except OSError as exc:
        raise StateFileError(f"{problem}; cannot keep it aside: {exc.strerror}") from None
    log.warning(
        "corrupt %s; loaded %s written at %s: index %d, %d records; changes after it are lost; "
        "the corrupt file is kept as %s",
        problem,
        prev.name,
        written,
        saved.index,
        len(saved.services),
        aside.name,
    )
    return saved


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
        _keep_previous(path)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StateFileError(f"state file {path}: cannot write it: {exc.strerror}") from None
    _fsync_dir(directory)


def _keep_previous(path: Path) -> None:
    """Make the current state file the previous generation; it stays in place itself.

    A hard link under a temporary name is renamed over the last ``.prev``; where
    links are not supported, a copy is. Nothing to do before the first write.
    """
    if not path.exists():
        return
    prev = previous_generation(path)
    tmp = prev.with_name(f".{prev.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        os.link(path, tmp)
    except OSError:
        shutil.copyfile(path, tmp)
    os.replace(tmp, prev)


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
        self,
        store: ServiceStore,
        path: Path,
        *,
        leases: LeaseBook | None = None,
        maintenance: MaintenanceBook | None = None,
        debounce: float = 0.05,
        retry: float = 1.0,
    ) -> None:
        self._store = store
        self._leases = leases if leases is not None else LeaseBook()
        self._maintenance = maintenance
        self.path = path
        self._debounce = debounce
        self._retry = retry
        self.saved_index = -1

    def save_now(self) -> None:
        # Only HTTP registrations: records of another source come back from it after a restart.
        # A lease changes only with a registration, which moves the index too.
        index, records = self._store.snapshot(source=HTTP)
        leases = self._leases.digests(r.name for r in records)
        # A maintenance change moves the index too (MaintenanceBook's on_change).
        book = self._maintenance
        entries = book.entries(source=HTTP_ENTRIES) if book is not None else []
        index = self._store.index  # the book's expiry may have moved it
        state = SavedState(index=index, services=records, leases=leases, maintenance=entries)
        save_state(self.path, state)
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
