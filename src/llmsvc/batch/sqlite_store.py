"""The embedded :class:`~llmsvc.batch.store.Store`: SQLite in WAL mode, files on disk.

Why SQLite: one batch service owns its data directory, and a SIGKILL must lose nothing a
call returned for. In WAL mode with ``synchronous=NORMAL`` a commit is a write into the
WAL (no fsync): it is in the OS's page cache when the call returns, so it survives the
process dying; a power loss can lose the last transactions unless ``synchronous="FULL"``
(an fsync per commit). Every method is one transaction (``BEGIN IMMEDIATE`` when it reads
before it writes), and the service calls it from its event loop: calls are small, and
the one slow path (the 50,000 lines of a batch) is one ``executemany``.

Counts by state are kept in the batch's row and changed in the transaction that moves a
line, so :meth:`SqliteStore.get_batch` is O(1) and always agrees with the lines; usage is
summed into ``usage`` in the transaction that completes a line.

File contents live in ``files/<id>``: written to ``<id>.tmp``, fsynced, renamed, the
directory fsynced, and only then the row inserted; a crash leaves at worst a ``.tmp``
(removed at open) or a content file without a row (never listed; harmless).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import orjson

from llmsvc.batch.ids import new_file_id, new_request_id
from llmsvc.batch.settings import BatchSettings
from llmsvc.batch.sqlite_schema import (
    BATCH_COLUMNS,
    LINE_COLUMNS,
    batch_from_row,
    dumps,
    line_from_row,
    migrate,
)
from llmsvc.batch.store import (
    ACTIVE_STATUSES,
    BatchRecord,
    BatchStatus,
    Counts,
    FileRecord,
    LineRecord,
    LineSpec,
    Sample,
    Store,
)

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]

_STATUSES: frozenset[str] = frozenset(get_args(BatchStatus))
_SETTABLE = {"output_file_id", "error_file_id", "raised", "errors", "model", "metadata"}
_OUTPUT_CHUNK = 1000


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SqliteStore:
    """``data_dir/batches.db`` and ``data_dir/files/``; one process writes them."""

    def __init__(
        self,
        data_dir: Path,
        *,
        synchronous: Synchronous = "NORMAL",
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``synchronous``: SQLite's; NORMAL survives a crash of the process, FULL also a
        power loss (an fsync per commit). ``clock``: a file's ``created_at``."""
        if synchronous not in get_args(Synchronous):
            raise ValueError(f"synchronous must be one of {', '.join(get_args(Synchronous))}")
        self.data_dir = data_dir
        self._clock = clock
        self.files_dir = data_dir / "files"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.files_dir.glob("*.tmp"):
            leftover.unlink(missing_ok=True)
        # A lock and check_same_thread=False: the service calls from its event loop, but a
        # caller that moves a large upload to a thread must not corrupt the connection.
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            data_dir / "batches.db", isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute("PRAGMA foreign_keys=ON")
        migrate(self._db, data_dir / "batches.db")

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken before the first read (no upgrade deadlock)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # files

    def create_file(
        self, *, tenant: str | None, purpose: str, filename: str, content: bytes
    ) -> FileRecord:
        """Write the content durably (temporary file, fsync, rename), then its row."""
        file_id = new_file_id()
        final = self.files_dir / file_id
        tmp = self.files_dir / f"{file_id}.tmp"
        with open(tmp, "wb") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, final)
        _fsync_dir(self.files_dir)
        record = FileRecord(
            id=file_id,
            tenant=tenant,
            purpose=purpose,
            filename=filename,
            bytes=len(content),
            created_at=int(self._clock()),
        )
        with self._tx() as db:
            db.execute(
                "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?)",
                (file_id, tenant, purpose, filename, record.bytes, record.created_at),
            )
        return record

    def get_file(self, file_id: str) -> FileRecord | None:
        rows = self._read("SELECT * FROM files WHERE id = ?", (file_id,))
        return FileRecord(*rows[0]) if rows else None

    def list_files(
        self,
        *,
        tenant: str | None,
        all_tenants: bool,
        purpose: str | None,
        after: str | None,
        limit: int,
    ) -> list[FileRecord]:
        """Newest first; ``after``: continue after that id (OpenAI's pagination)."""
        where, params = self._page("files", tenant, all_tenants, after)
        if purpose is not None:
            where.append("purpose = ?")
            params.append(purpose)
        rows = self._read(
            f"SELECT * FROM files WHERE {' AND '.join(where)} "
            "ORDER BY created_at DESC, id DESC LIMIT ?",
            (*params, limit),
        )
        return [FileRecord(*row) for row in rows]

    def file_content(self, file_id: str) -> bytes:
        """The content of a stored file; KeyError if there is no such file."""
        if self.get_file(file_id) is None:
            raise KeyError(file_id)
        return (self.files_dir / file_id).read_bytes()

    def delete_file(self, file_id: str) -> bool:
        """The row, then the content (a crash between leaves an unlisted file)."""
        with self._tx() as db:
            deleted = db.execute("DELETE FROM files WHERE id = ?", (file_id,)).rowcount
        if deleted:
            (self.files_dir / file_id).unlink(missing_ok=True)
        return bool(deleted)

    def _page(
        self, table: str, tenant: str | None, all_tenants: bool, after: str | None
    ) -> tuple[list[str], list[Any]]:
        """The WHERE terms of a tenant's page after an id (newest first, ties by id)."""
        where, params = ["1"], list[Any]()
        if not all_tenants:
            where.append("tenant IS ?")
            params.append(tenant)
        if after is not None:
            # An unknown ``after`` gives an empty page (never the first page again).
            where.append(f"(created_at, id) < (SELECT created_at, id FROM {table} WHERE id = ?)")
            params.append(after)
        return where, params

    # batches

    def create_batch(self, batch: BatchRecord, lines: Sequence[LineSpec]) -> BatchRecord:
        """The batch and all its lines in one transaction (pending, counts.total set)."""
        total = len(lines)
        with self._tx() as db:
            db.execute(
                f"INSERT INTO batches ({BATCH_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, 0)",
                (
                    batch.id,
                    batch.tenant,
                    batch.endpoint,
                    batch.input_file_id,
                    batch.completion_window,
                    batch.window_seconds,
                    batch.created_at,
                    batch.status,
                    batch.model,
                    dumps(batch.metadata) if batch.metadata is not None else None,
                    batch.output_file_id,
                    batch.error_file_id,
                    dumps(batch.errors) if batch.errors is not None else None,
                    dumps(batch.times),
                    int(batch.raised),
                    dumps(batch.usage),
                    total,
                    total,
                ),
            )
            db.executemany(
                "INSERT INTO lines (batch_id, idx, custom_id, url, body, state) "
                "VALUES (?, ?, ?, ?, ?, 'pending')",
                ((batch.id, s.index, s.custom_id, s.url, dumps(s.body)) for s in lines),
            )
        return dataclasses.replace(
            batch, counts=Counts(total=total, pending=total), usage=dict(batch.usage)
        )

    def get_batch(self, batch_id: str) -> BatchRecord | None:
        """With fresh ``counts`` and ``usage``."""
        rows = self._read(f"SELECT {BATCH_COLUMNS} FROM batches WHERE id = ?", (batch_id,))
        return batch_from_row(rows[0]) if rows else None

    def list_batches(
        self, *, tenant: str | None, all_tenants: bool, after: str | None, limit: int
    ) -> list[BatchRecord]:
        """Newest first; ``after``: continue after that id."""
        where, params = self._page("batches", tenant, all_tenants, after)
        rows = self._read(
            f"SELECT {BATCH_COLUMNS} FROM batches WHERE {' AND '.join(where)} "
            "ORDER BY created_at DESC, id DESC LIMIT ?",
            (*params, limit),
        )
        return [batch_from_row(row) for row in rows]

    def active_batches(self) -> list[BatchRecord]:
        """Every batch whose status is in :data:`ACTIVE_STATUSES`, with fresh counts."""
        marks = ", ".join("?" * len(ACTIVE_STATUSES))
        rows = self._read(
            f"SELECT {BATCH_COLUMNS} FROM batches WHERE status IN ({marks}) "
            "ORDER BY created_at, id",
            sorted(ACTIVE_STATUSES),
        )
        return [batch_from_row(row) for row in rows]

    def set_status(self, batch_id: str, status: BatchStatus, *, at: float, **fields: Any) -> None:
        """Status, its timestamp (``<status>_at``), and any other BatchRecord fields given
        (``output_file_id``, ``error_file_id``, ``raised``, ``errors``)."""
        if status not in _STATUSES:
            raise ValueError(f"unknown batch status {status!r}")
        unknown = set(fields) - _SETTABLE
        if unknown:
            raise TypeError(f"set_status cannot set {', '.join(sorted(unknown))}")
        sets = ["status = ?", "times = json_set(times, ?, ?)"]
        params: list[Any] = [status, f"$.{status}_at", at]
        for name, value in fields.items():
            sets.append(f"{name} = ?")
            if name in {"errors", "metadata"}:
                value = None if value is None else dumps(value)
            elif name == "raised":
                value = int(bool(value))
            params.append(value)
        with self._tx() as db:
            changed = db.execute(
                f"UPDATE batches SET {', '.join(sets)} WHERE id = ?", (*params, batch_id)
            ).rowcount
        if not changed:
            raise KeyError(batch_id)

    def set_raised(self, batch_id: str, raised: bool) -> None:
        with self._tx() as db:
            db.execute("UPDATE batches SET raised = ? WHERE id = ?", (int(raised), batch_id))

    # lines

    def claim(self, batch_id: str, limit: int, *, now: float) -> list[LineRecord]:
        """Up to ``limit`` pending lines whose ``not_before`` has passed, lowest index first,
        made ``running`` (attempts + 1)."""
        if limit <= 0:
            return []
        with self._tx() as db:
            rows = db.execute(
                "UPDATE lines SET state = 'running', attempts = attempts + 1 "
                "WHERE rowid IN (SELECT rowid FROM lines WHERE batch_id = ? "
                "AND state = 'pending' AND not_before <= ? ORDER BY idx LIMIT ?) "
                f"RETURNING {LINE_COLUMNS}",
                (batch_id, now, limit),
            ).fetchall()
            self._move(db, batch_id, "pending", "running", len(rows))
        return sorted((line_from_row(row) for row in rows), key=lambda line: line.index)

    def complete(
        self,
        batch_id: str,
        index: int,
        output: dict[str, Any],
        *,
        now: float,
        usage: dict[str, int] | None = None,
    ) -> bool:
        """running → completed with its output line; False (and nothing changed) if the line
        is not running (already ended: a duplicate answer)."""
        with self._tx() as db:
            if not self._end(db, batch_id, index, "completed", output, now, None):
                return False
            if usage:
                (text,) = db.execute(
                    "SELECT usage FROM batches WHERE id = ?", (batch_id,)
                ).fetchone()
                summed: dict[str, int] = orjson.loads(text)
                for name, tokens in usage.items():
                    summed[name] = summed.get(name, 0) + int(tokens)
                db.execute("UPDATE batches SET usage = ? WHERE id = ?", (dumps(summed), batch_id))
        return True

    def fail(
        self, batch_id: str, index: int, output: dict[str, Any], *, now: float, error: str
    ) -> bool:
        """running → failed with its error-file line; False if not running."""
        with self._tx() as db:
            return self._end(db, batch_id, index, "failed", output, now, error)

    def retry(
        self, batch_id: str, index: int, *, not_before: float, error: str, counts_as_failure: bool
    ) -> None:
        """running → pending until ``not_before``; ``failures + 1`` if it counts."""
        with self._tx() as db:
            moved = db.execute(
                "UPDATE lines SET state = 'pending', not_before = ?, last_error = ?, "
                "failures = failures + ? WHERE batch_id = ? AND idx = ? AND state = 'running'",
                (not_before, error, int(counts_as_failure), batch_id, index),
            ).rowcount
            self._move(db, batch_id, "running", "pending", moved)

    def recover(self) -> int:
        """At start: every ``running`` line back to ``pending`` (its answer was lost with the
        process); returns how many."""
        with self._tx() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM batches WHERE n_running > 0")]
            total = 0
            for batch_id in ids:
                moved = db.execute(
                    "UPDATE lines SET state = 'pending' WHERE batch_id = ? AND state = 'running'",
                    (batch_id,),
                ).rowcount
                self._move(db, batch_id, "running", "pending", moved)
                total += moved
        return total

    def end_pending(self, batch_id: str, *, now: float, code: str, message: str) -> int:
        """Every pending line of the batch → failed with ``{"code": code, "message": message}``
        as its error (expiry: ``batch_expired``; cancel: ``batch_cancelled``); returns how many."""
        error = {"code": code, "message": message}
        with self._tx() as db:
            pending = db.execute(
                "SELECT idx, custom_id FROM lines WHERE batch_id = ? AND state = 'pending'",
                (batch_id,),
            ).fetchall()
            db.executemany(
                "UPDATE lines SET state = 'failed', output = ?, finished_at = ?, last_error = ? "
                "WHERE batch_id = ? AND idx = ?",
                (
                    (
                        dumps(
                            {
                                "id": new_request_id(),
                                "custom_id": custom_id,
                                "response": None,
                                "error": error,
                            }
                        ),
                        now,
                        message,
                        batch_id,
                        idx,
                    )
                    for idx, custom_id in pending
                ),
            )
            self._move(db, batch_id, "pending", "failed", len(pending))
        return len(pending)

    def outputs(
        self, batch_id: str, state: Literal["completed", "failed"]
    ) -> Iterator[dict[str, Any]]:
        """The ended lines' output JSON, by line index (read in chunks, not all at once)."""
        last = -1
        while True:
            rows = self._read(
                "SELECT idx, output FROM lines WHERE batch_id = ? AND state = ? AND idx > ? "
                "ORDER BY idx LIMIT ?",
                (batch_id, state, last, _OUTPUT_CHUNK),
            )
            for idx, text in rows:
                last = idx
                yield orjson.loads(text)
            if len(rows) < _OUTPUT_CHUNK:
                return

    def counts(self, batch_id: str) -> Counts:
        rows = self._read(
            "SELECT n_total, n_pending, n_running, n_completed, n_failed FROM batches WHERE id = ?",
            (batch_id,),
        )
        return Counts(*rows[0]) if rows else Counts()

    def line(self, batch_id: str, index: int) -> LineRecord | None:
        """One line as stored (for inspection and tests; not part of :class:`Store`)."""
        rows = self._read(
            f"SELECT {LINE_COLUMNS} FROM lines WHERE batch_id = ? AND idx = ?", (batch_id, index)
        )
        return line_from_row(rows[0]) if rows else None

    def _end(
        self,
        db: sqlite3.Connection,
        batch_id: str,
        index: int,
        state: Literal["completed", "failed"],
        output: dict[str, Any],
        now: float,
        error: str | None,
    ) -> bool:
        ended = db.execute(
            "UPDATE lines SET state = ?, output = ?, finished_at = ?, "
            "last_error = coalesce(?, last_error) "
            "WHERE batch_id = ? AND idx = ? AND state = 'running'",
            (state, dumps(output), now, error, batch_id, index),
        ).rowcount
        self._move(db, batch_id, "running", state, ended)
        return bool(ended)

    @staticmethod
    def _move(db: sqlite3.Connection, batch_id: str, src: str, dst: str, n: int) -> None:
        """Keep the batch's counts with its lines, in the same transaction."""
        if n:
            db.execute(
                f"UPDATE batches SET n_{src} = n_{src} - ?, n_{dst} = n_{dst} + ? WHERE id = ?",
                (n, n, batch_id),
            )

    # samples

    def add_sample(self, batch_id: str, sample: Sample) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?)",
                (
                    batch_id,
                    sample.at,
                    sample.completed,
                    sample.failed,
                    sample.throughput,
                    sample.eta,
                ),
            )

    def samples(self, batch_id: str) -> list[Sample]:
        rows = self._read(
            "SELECT at, completed, failed, throughput, eta FROM samples WHERE batch_id = ? "
            "ORDER BY at",
            (batch_id,),
        )
        return [Sample(*row) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def open_store(settings: BatchSettings) -> Store:
    """The store the service runs on: SQLite under ``--data-dir``."""
    return SqliteStore(settings.data_dir)
