"""Records, their status, the change index and its watchers: pure logic with a clock.

A record's ``status`` is derived from two inputs: the last health check
(``consecutive_failures > 0`` means it failed) and the heartbeat TTL (no
heartbeat for longer than ``ttl`` seconds). It is ``unhealthy`` if either says
so, else ``healthy``. A new registration starts healthy; checks decide after.
A heartbeat that reports ``standby`` (an engine its babysitter stopped or put to
sleep while idle) makes the status ``standby`` until a heartbeat reports
otherwise or the heartbeats stop (the TTL makes it ``unhealthy``, as any other);
health checks leave a ``standby`` record alone.

The change index grows by one on every change a watcher cares about:
register, update, deregister, removal, a status flip, a metadata change. A
heartbeat or a health check that changes nothing but timestamps and failure
counters leaves it alone. Watchers block on one shared :class:`asyncio.Event`
that is replaced at every change, so a thousand watchers cost a thousand
futures and nothing else.

Records are never mutated in place: every change stores a new copy, so a
record held across an ``await`` is a consistent snapshot.

Every read of records (:meth:`~ServiceStore.get`, :meth:`~ServiceStore.records`,
:meth:`~ServiceStore.snapshot`, :meth:`~ServiceStore.stats`, and
:meth:`~ServiceStore.wait_for_change` before it compares) applies the TTL
first, so no caller has to. That costs one comparison until the oldest
heartbeat that may go stale is older than the TTL; only then does one pass
over the records flip the stale ones (and only those are stored anew). A
record going stale while nobody reads moves the index at the next read or at
the registry's periodic :meth:`~ServiceStore.sweep`, which wakes the watchers.

Every record has a source. ``http`` records are registered over the API and
follow the rules above. A record of another source (``kubernetes``) belongs to
that source alone: it is replaced as a whole set by :meth:`replace_source`,
its status is whatever the source says (no TTL, no health checks), and the
API's writes to its name raise :class:`ManagedElsewhere`.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from llmsvc.core.records import ServiceRecord, ServiceRegistration, Status

Clock = Callable[[], float]

HTTP = "http"
"""The source of records registered over the API."""

# Fields whose change alone does not move the change index.
_UNWATCHED = frozenset({"last_heartbeat", "last_check", "consecutive_failures"})


class ManagedElsewhere(Exception):
    """A write over the API to a record that another source owns."""

    def __init__(self, name: str, source: str) -> None:
        super().__init__(f"service '{name}' comes from the {source} source")
        self.name = name
        self.source = source


@dataclass(frozen=True)
class Stats:
    """Counts over all records."""

    total: int
    healthy: int
    unhealthy: int
    standby: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    by_model: dict[str, int] = field(default_factory=dict)


class ServiceStore:
    """All registered services, keyed by name."""

    def __init__(self, *, ttl: float, clock: Clock = time.time, index: int = 0) -> None:
        self._ttl = ttl
        self._clock = clock
        self._records: dict[str, ServiceRecord] = {}
        self._sources: dict[str, str] = {}  # name -> source, for records not from HTTP
        self._index = index
        self._changed = asyncio.Event()
        self._closed = False
        # A lower bound of the heartbeats of the HTTP records that may still go stale
        # (None: none may): until it is older than the TTL, no status can flip.
        self._oldest_fresh: float | None = None

    # -- reads ---------------------------------------------------------------

    @property
    def index(self) -> int:
        """The change index; reading it applies no TTL (:meth:`snapshot` reads both)."""
        return self._index

    def __len__(self) -> int:
        return len(self._records)

    def get(self, name: str) -> ServiceRecord | None:
        self.expire()
        return self._records.get(name)

    def source_of(self, name: str) -> str | None:
        """The source of a record (``http``, ``kubernetes``); None when unknown."""
        if name not in self._records:
            return None
        return self._sources.get(name, HTTP)

    def records(
        self,
        *,
        healthy: bool | None = None,
        type_: str | None = None,
        model: str | None = None,
        source: str | None = None,
    ) -> list[ServiceRecord]:
        """The records matching every given filter, sorted by name."""
        self.expire()
        found = []
        for name in sorted(self._records):
            rec = self._records[name]
            if source is not None and self._sources.get(name, HTTP) != source:
                continue
            if healthy is not None and rec.healthy != healthy:
                continue
            if type_ is not None and rec.type != type_:
                continue
            if model is not None and model not in rec.models:
                continue
            found.append(rec)
        return found

    def snapshot(
        self,
        *,
        healthy: bool | None = None,
        type_: str | None = None,
        model: str | None = None,
        source: str | None = None,
    ) -> tuple[int, list[ServiceRecord]]:
        """The change index and the records matching the filters, as of one moment."""
        records = self.records(healthy=healthy, type_=type_, model=model, source=source)
        return self._index, records

    def stats(self) -> Stats:
        self.expire()
        records = self._records.values()
        healthy = sum(1 for r in records if r.healthy)
        standby = sum(1 for r in records if r.status == "standby")
        models = Counter(m for r in records for m in dict.fromkeys(r.models))
        return Stats(
            total=len(self._records),
            healthy=healthy,
            unhealthy=len(self._records) - healthy - standby,
            standby=standby,
            by_type=dict(Counter(r.type for r in records)),
            by_model=dict(models),
        )

    # -- writes --------------------------------------------------------------

    def register(self, registration: ServiceRegistration) -> tuple[ServiceRecord, bool]:
        """Add or replace a record; True when the name was new. Counts as a heartbeat."""
        self._check_http(registration.name)
        now = self._clock()
        created = registration.name not in self._records
        record = ServiceRecord.model_validate(
            {
                **registration.model_dump(),
                "registered_at": now,
                "last_heartbeat": now,
            }
        )
        self._put(record, force=True)
        return self._records[record.name], created

    def update(self, registration: ServiceRegistration) -> ServiceRecord | None:
        """Replace the registration of a known record; None when unknown.

        Timestamps are kept; a changed address resets the health-check state,
        which described the old one. Counts as a heartbeat.
        """
        self._check_http(registration.name)
        old = self._records.get(registration.name)
        if old is None:
            return None
        record = ServiceRecord.model_validate(
            {
                **old.model_dump(),
                **registration.model_dump(),
                "url": registration.url,  # derived again when absent
                "last_heartbeat": self._clock(),
            }
        )
        if record.url != old.url:
            record = record.model_copy(update={"consecutive_failures": 0, "last_check": None})
        return self._put(record)

    def deregister(self, name: str) -> ServiceRecord | None:
        self._check_http(name)
        record = self._records.pop(name, None)
        if record is not None:
            self._bump()
        return record

    def heartbeat(self, name: str, status: Status | None = None) -> ServiceRecord | None:
        """Refresh ``last_heartbeat``; None when unknown (the sender re-registers).

        A ``status`` the sender reports counts as a health check's result.
        """
        self._check_http(name)
        old = self._records.get(name)
        if old is None:
            return None
        now = self._clock()
        update: dict[str, Any] = {"last_heartbeat": now}
        if status is not None:
            failed = status == "unhealthy"
            update["consecutive_failures"] = old.consecutive_failures + 1 if failed else 0
            update["last_check"] = now
            # standby is kept by _status until a heartbeat says otherwise; healthy here is a
            # placeholder that _status derives again (failures, TTL).
            update["status"] = "standby" if status == "standby" else "healthy"
        return self._put(old.model_copy(update=update))

    def now(self) -> float:
        return self._clock()

    def record_check(
        self, name: str, ok: bool, *, url: str | None, started: float | None = None
    ) -> ServiceRecord | None:
        """Apply a health-check result, unless the record went or moved meanwhile.

        A check that ``started`` before the record was registered anew, or before a
        newer verdict (a heartbeat's reported status), is stale and ignored.
        """
        old = self._records.get(name)
        if old is None or old.url != url or name in self._sources or old.status == "standby":
            return None
        if started is not None and (
            old.registered_at > started or (old.last_check or 0.0) > started
        ):
            return None
        failures = 0 if ok else old.consecutive_failures + 1
        update: dict[str, Any] = {"last_check": self._clock(), "consecutive_failures": failures}
        return self._put(old.model_copy(update=update))

    def expire(self) -> list[str]:
        """Apply the TTL to every status now; the names whose status flipped.

        Reads call it themselves. It is one comparison while no heartbeat can be
        stale yet, else one pass over the records (:meth:`_apply_ttl`).
        """
        now = self._clock()
        oldest = self._oldest_fresh
        if oldest is None or not self._stale(oldest, now):
            return []
        return self._apply_ttl(now)

    def sweep(self) -> list[ServiceRecord]:
        """Apply the TTL; remove and return the records silent for over 2×TTL."""
        self.expire()
        if self._ttl <= 0:
            return []
        deadline = self._clock() - 2 * self._ttl
        removed = [
            r
            for r in self._records.values()
            if r.last_heartbeat < deadline and r.name not in self._sources
        ]
        for record in removed:
            del self._records[record.name]
        if removed:
            self._bump()
        return removed

    def restore(self, records: Iterable[ServiceRecord], *, index: int = 0) -> None:
        """Load saved records; the TTL counts from now. Watchers see a new index."""
        now = self._clock()
        for record in records:
            self._records[record.name] = record.model_copy(update={"last_heartbeat": now})
        self._index = max(self._index, index)
        self._apply_ttl(now)  # every saved status is derived again, whatever is due
        self._bump()

    def replace_source(self, source: str, records: Iterable[ServiceRecord]) -> bool:
        """Make ``records`` the whole set of ``source``'s records, in one step.

        Records of ``source`` not given are removed; a name that an HTTP
        registration held is taken over (the source wins). Statuses are kept as
        given. ``registered_at`` is kept for a name the source already had;
        ``last_heartbeat`` is now (when the source last confirmed the record).
        Moves the change index once, and only when something watched changed.
        True when it did.
        """
        if source == HTTP:
            raise ValueError("HTTP records are registered one by one")
        now = self._clock()
        new = {r.name: r for r in records}
        changed = False
        for name in [n for n, s in self._sources.items() if s == source and n not in new]:
            del self._records[name], self._sources[name]
            changed = True
        for name, given in new.items():
            old = self._records.get(name)
            ours = old is not None and self._sources.get(name) == source
            registered = old.registered_at if old is not None and ours else now
            record = given.model_copy(update={"registered_at": registered, "last_heartbeat": now})
            self._records[name] = record
            self._sources[name] = source
            if old is None or not ours or _watched(old) != _watched(record):
                changed = True
        if changed:
            self._bump()
        return changed

    def touch(self) -> None:
        """Move the change index for a change beside the records that watchers care
        about (a maintenance entry): it wakes every blocking query and the state writer."""
        self._bump()

    # -- watching ------------------------------------------------------------

    async def wait_for_change(
        self, index: int, timeout: float | None, *, stop_at_close: bool = True
    ) -> None:
        """Return once the change index differs from ``index``, at ``timeout``, or at close.

        The TTL is applied first. An ``index`` ahead of ours comes from an earlier
        life of the registry: it returns at once so that the watcher starts over
        from our index.
        """
        self.expire()
        if (stop_at_close and self._closed) or self._index != index:
            return
        event = self._changed
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            return

    def close(self) -> None:
        """Release every watcher now and from now on (shutdown)."""
        self._closed = True
        self._release()

    # -- internals -----------------------------------------------------------

    def _check_http(self, name: str) -> None:
        source = self._sources.get(name)
        if source is not None:
            raise ManagedElsewhere(name, source)

    def _stale(self, last_heartbeat: float, now: float) -> bool:
        return self._ttl > 0 and now - last_heartbeat > self._ttl

    def _status(self, record: ServiceRecord, now: float) -> Status:
        if record.name in self._sources:
            return record.status
        stale = self._stale(record.last_heartbeat, now)
        if not stale and record.status == "standby":
            return "standby"
        return "unhealthy" if stale or record.consecutive_failures > 0 else "healthy"

    def _apply_ttl(self, now: float) -> list[str]:
        """One pass: store anew the records whose status flips; the names of those.

        Also finds the oldest heartbeat of the HTTP records not stale yet, the next
        moment a status can flip.
        """
        flipped = []
        oldest: float | None = None
        for name, old in list(self._records.items()):
            if self._status(old, now) != old.status:  # cheap test first: most never flip
                self._put(old)
                flipped.append(name)
            if name not in self._sources and not self._stale(old.last_heartbeat, now):
                beat = old.last_heartbeat
                oldest = beat if oldest is None else min(oldest, beat)
        self._oldest_fresh = oldest
        return flipped

    def _put(self, record: ServiceRecord, *, force: bool = False) -> ServiceRecord:
        if self._ttl > 0 and record.name not in self._sources:
            beat, oldest = record.last_heartbeat, self._oldest_fresh
            self._oldest_fresh = beat if oldest is None else min(oldest, beat)
        status = self._status(record, self._clock())
        if status != record.status:
            record = record.model_copy(update={"status": status})
        old = self._records.get(record.name)
        self._records[record.name] = record
        if force or old is None or _watched(old) != _watched(record):
            self._bump()
        return record

    def _bump(self) -> None:
        self._index += 1
        self._release()

    def _release(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


def _watched(record: ServiceRecord) -> dict[str, Any]:
    return record.model_dump(exclude=set(_UNWATCHED))
