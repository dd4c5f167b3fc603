"""The SQLite store's schema, its migrations, and rows decoded into the store's records.

Kept apart from :mod:`llmsvc.batch.sqlite_store` (the transactions) so that a schema
change is one reviewed place: a new migration appended to :data:`MIGRATIONS`, the column
lists and decoders next to it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from llmsvc.batch.store import BatchRecord, Counts, LineRecord

# Each entry migrates the schema from version i to i + 1 (PRAGMA user_version); a later
# release appends one and never edits the ones before it.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE files (
        id TEXT PRIMARY KEY, tenant TEXT, purpose TEXT NOT NULL, filename TEXT NOT NULL,
        bytes INTEGER NOT NULL, created_at INTEGER NOT NULL
    );
    CREATE INDEX files_by_time ON files (created_at, id);
    CREATE TABLE batches (
        id TEXT PRIMARY KEY, tenant TEXT, endpoint TEXT NOT NULL, input_file_id TEXT NOT NULL,
        completion_window TEXT NOT NULL, window_seconds REAL NOT NULL, created_at REAL NOT NULL,
        status TEXT NOT NULL, model TEXT, metadata TEXT, output_file_id TEXT,
        error_file_id TEXT, errors TEXT, times TEXT NOT NULL DEFAULT '{}',
        raised INTEGER NOT NULL DEFAULT 0, usage TEXT NOT NULL DEFAULT '{}',
        n_total INTEGER NOT NULL, n_pending INTEGER NOT NULL, n_running INTEGER NOT NULL,
        n_completed INTEGER NOT NULL, n_failed INTEGER NOT NULL
    );
    CREATE INDEX batches_by_time ON batches (created_at, id);
    CREATE INDEX batches_by_status ON batches (status);
    CREATE TABLE lines (
        batch_id TEXT NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
        idx INTEGER NOT NULL, custom_id TEXT NOT NULL, url TEXT NOT NULL, body TEXT NOT NULL,
        state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
        failures INTEGER NOT NULL DEFAULT 0, not_before REAL NOT NULL DEFAULT 0,
        last_error TEXT, output TEXT, finished_at REAL,
        PRIMARY KEY (batch_id, idx)
    );
    -- claim() walks a batch's pending lines lowest index first, skipping the few that
    -- wait for a retry (not_before): this index serves that order without a sort.
    CREATE INDEX lines_by_state ON lines (batch_id, state, idx, not_before);
    CREATE TABLE samples (
        batch_id TEXT NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
        at REAL NOT NULL, completed INTEGER NOT NULL, failed INTEGER NOT NULL,
        throughput REAL, eta REAL
    );
    CREATE INDEX samples_by_batch ON samples (batch_id, at);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

BATCH_COLUMNS = (
    "id, tenant, endpoint, input_file_id, completion_window, window_seconds, created_at, "
    "status, model, metadata, output_file_id, error_file_id, errors, times, raised, usage, "
    "n_total, n_pending, n_running, n_completed, n_failed"
)
LINE_COLUMNS = (
    "batch_id, idx, custom_id, url, body, state, attempts, failures, not_before, "
    "last_error, output, finished_at"
)


class SchemaTooNew(sqlite3.DatabaseError):
    """The database was written by a newer llmsvc (a ``sqlite3.Error``, so that callers
    that report an unusable store report this one too)."""


def migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring the database at ``path`` to :data:`SCHEMA_VERSION`, each step one transaction;
    refuse a database written by a newer llmsvc rather than misread it."""
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"{path} has schema version {version}, newer than this llmsvc's "
            f"{SCHEMA_VERSION}: upgrade llmsvc"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        script = MIGRATIONS[target - 1]
        try:
            db.executescript(f"BEGIN IMMEDIATE; {script}; PRAGMA user_version={target}; COMMIT;")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def loads_opt(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def batch_from_row(row: Sequence[Any]) -> BatchRecord:
    (id_, tenant, endpoint, input_file_id, window, window_seconds, created_at, status) = row[:8]
    (model, metadata, output_id, error_id, errors, times, raised, usage) = row[8:16]
    return BatchRecord(
        id=id_,
        tenant=tenant,
        endpoint=endpoint,
        input_file_id=input_file_id,
        completion_window=window,
        window_seconds=window_seconds,
        created_at=created_at,
        status=status,
        model=model,
        metadata=loads_opt(metadata),
        output_file_id=output_id,
        error_file_id=error_id,
        errors=loads_opt(errors),
        times=orjson.loads(times),
        counts=Counts(*row[16:21]),
        raised=bool(raised),
        usage=orjson.loads(usage),
    )


def line_from_row(row: Sequence[Any]) -> LineRecord:
    (batch_id, idx, custom_id, url, body, state, attempts, failures, not_before) = row[:9]
    (last_error, output, finished_at) = row[9:12]
    return LineRecord(
        batch_id=batch_id,
        index=idx,
        custom_id=custom_id,
        url=url,
        body=orjson.loads(body),
        state=state,
        attempts=attempts,
        failures=failures,
        not_before=not_before,
        last_error=last_error,
        output=loads_opt(output),
        finished_at=finished_at,
    )
