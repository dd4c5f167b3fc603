"""What the batch service keeps, and the one interface every storage backend implements.

The embedded default (:mod:`llmsvc.batch.sqlite_store`) is SQLite in WAL mode for
batches, lines and samples, and files on disk; a server database (Postgres, for
several replicas) implements the same :class:`Store`. Every method is one
transaction: a SIGKILL between two calls loses nothing that a call returned for.

Exactly once into the output: a line's answer is stored with the line, in the
transaction that marks it ``completed`` (or ``failed``); the output and error files
are written from the store when the batch finalizes, so a line answered twice by the
engines (at least once: a ``running`` line is run again after a crash) is still one
line in the output.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

BatchStatus = Literal[
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]
ACTIVE_STATUSES: frozenset[str] = frozenset(
    {"validating", "in_progress", "finalizing", "cancelling"}
)
"""Batches the runner still works on (the rest are ended)."""

LineState = Literal["pending", "running", "completed", "failed"]


@dataclass(slots=True)
class FileRecord:
    """An uploaded or produced file (OpenAI's file object, plus its owner)."""

    id: str  # "file-<hex>"
    tenant: str | None  # None: made by an admin / a router without tenants
    purpose: str  # "batch" for uploads; "batch_output" for outputs and error files
    filename: str
    bytes: int
    created_at: int  # unix seconds


@dataclass(slots=True)
class LineSpec:
    """One validated input line, as it will be sent."""

    index: int  # 0-based position in the input file (line number - 1)
    custom_id: str
    method: str  # "POST"
    url: str  # the batch's endpoint, e.g. "/v1/chat/completions"
    body: dict[str, Any]


@dataclass(slots=True)
class LineRecord:
    """A line and where it is."""

    batch_id: str
    index: int
    custom_id: str
    url: str
    body: dict[str, Any]
    state: LineState
    attempts: int = 0  # sends so far (capacity refusals included)
    failures: int = 0  # sends that failed in a way that counts toward --max-attempts
    not_before: float = 0.0  # unix seconds: a retried line waits until then
    last_error: str | None = None
    output: dict[str, Any] | None = None  # the output/error file's JSON line, when ended
    finished_at: float | None = None


@dataclass(slots=True)
class Counts:
    """Lines of one batch by state."""

    total: int = 0
    pending: int = 0
    running: int = 0
    completed: int = 0
    failed: int = 0

    @property
    def done(self) -> int:
        """Lines that ended (into the output or the error file)."""
        return self.completed + self.failed


@dataclass(slots=True)
class BatchRecord:
    """A batch: OpenAI's fields, its owner, its deadline, and llmsvc's state."""

    id: str  # "batch_<hex>"
    tenant: str | None
    endpoint: str
    input_file_id: str
    completion_window: str  # as given: "24h", "30m", "7d"
    window_seconds: float
    created_at: float  # unix seconds (float; the API shows ints)
    status: BatchStatus
    model: str | None = None  # the one model every line names (None: not known yet)
    metadata: dict[str, str] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] | None = None  # validation errors {code, message, param, line}
    # OpenAI's timestamps by name ("in_progress_at", "finalizing_at", "completed_at",
    # "failed_at", "expired_at", "cancelling_at", "cancelled_at"), unix seconds.
    times: dict[str, float] = field(default_factory=dict)
    counts: Counts = field(default_factory=Counts)
    raised: bool = False  # lines go out at priority standard (at risk, owner allowed it)
    usage: dict[str, int] = field(default_factory=dict)  # summed usage of completed lines

    @property
    def deadline(self) -> float:
        """Creation + completion window, unix seconds."""
        return self.created_at + self.window_seconds


@dataclass(slots=True)
class Sample:
    """Progress of one batch at one moment, for GET /sla/report."""

    at: float
    completed: int
    failed: int
    throughput: float | None  # lines/s, smoothed
    eta: float | None  # unix seconds of the predicted finish


class Store(Protocol):
    """Batches, lines, files and samples. Each call is atomic and durable on return."""

    # files
    def create_file(
        self, *, tenant: str | None, purpose: str, filename: str, content: bytes
    ) -> FileRecord:
        """Write the content durably (temporary file, fsync, rename), then its row."""
        ...

    def get_file(self, file_id: str) -> FileRecord | None: ...

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
        ...

    def file_content(self, file_id: str) -> bytes: ...

    def delete_file(self, file_id: str) -> bool: ...

    # batches
    def create_batch(self, batch: BatchRecord, lines: Sequence[LineSpec]) -> BatchRecord:
        """The batch and all its lines in one transaction (pending, counts.total set)."""
        ...

    def get_batch(self, batch_id: str) -> BatchRecord | None:
        """With fresh ``counts`` and ``usage``."""
        ...

    def list_batches(
        self, *, tenant: str | None, all_tenants: bool, after: str | None, limit: int
    ) -> list[BatchRecord]: ...

    def active_batches(self) -> list[BatchRecord]:
        """Every batch whose status is in :data:`ACTIVE_STATUSES`, with fresh counts."""
        ...

    def set_status(self, batch_id: str, status: BatchStatus, *, at: float, **fields: Any) -> None:
        """Status, its timestamp (``<status>_at``), and any other BatchRecord fields given
        (``output_file_id``, ``error_file_id``, ``raised``, ``errors``)."""
        ...

    def set_raised(self, batch_id: str, raised: bool) -> None: ...

    # lines
    def claim(self, batch_id: str, limit: int, *, now: float) -> list[LineRecord]:
        """Up to ``limit`` pending lines whose ``not_before`` has passed, lowest index first,
        made ``running`` (attempts + 1)."""
        ...

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
        ...

    def fail(
        self, batch_id: str, index: int, output: dict[str, Any], *, now: float, error: str
    ) -> bool:
        """running → failed with its error-file line; False if not running."""
        ...

    def retry(
        self, batch_id: str, index: int, *, not_before: float, error: str, counts_as_failure: bool
    ) -> None:
        """running → pending until ``not_before``; ``failures + 1`` if it counts."""
        ...

    def recover(self) -> int:
        """At start: every ``running`` line back to ``pending`` (its answer was lost with the
        process); returns how many."""
        ...

    def end_pending(self, batch_id: str, *, now: float, code: str, message: str) -> int:
        """Every pending line of the batch → failed with ``{"code": code, "message": message}``
        as its error (expiry: ``batch_expired``; cancel: ``batch_cancelled``); returns how many."""
        ...

    def outputs(
        self, batch_id: str, state: Literal["completed", "failed"]
    ) -> Iterator[dict[str, Any]]:
        """The ended lines' output JSON, by line index."""
        ...

    def counts(self, batch_id: str) -> Counts: ...

    # samples (GET /sla/report)
    def add_sample(self, batch_id: str, sample: Sample) -> None: ...

    def samples(self, batch_id: str) -> list[Sample]: ...

    def close(self) -> None: ...
