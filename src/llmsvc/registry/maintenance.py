"""The maintenance book: every maintenance entry the registry holds, by source.

Entries are keyed by (model, backend) within their source. ``http`` entries
are set and removed over the API (:mod:`.maintenance_api`) and saved in the
state file; a source such as ``kubernetes`` (the InferenceService annotations)
replaces its whole set at once with :meth:`MaintenanceBook.replace_source`
and is not saved (it comes back from Kubernetes after a restart). An HTTP
entry and another source's entry for the same key live side by side: the
router obeys every entry, so deleting one over HTTP never ends the other.

Every change calls ``on_change`` once: the registry moves its one change index
there (:meth:`~llmsvc.registry.store.ServiceStore.touch`), which wakes the
blocking queries of ``/maintenance`` (and ``/services``) and the state file's
writer. An entry past its ``until`` is dropped at the next read (or sweep),
which is a change too: like the store's TTL, nobody has to remove it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from llmsvc.core.maintenance import MaintenanceEntry, MaintenanceRequest, Source, utc_now

Clock = Callable[[], float]
Key = tuple[str, str | None]

HTTP: Source = "http"


class MaintenanceBook:
    """The maintenance entries of every source, with a Unix-time clock."""

    def __init__(self, *, on_change: Callable[[], None], clock: Clock = time.time) -> None:
        self._on_change = on_change
        self._clock = clock
        self._entries: dict[Source, dict[Key, MaintenanceEntry]] = {}

    # -- reads ---------------------------------------------------------------

    def entries(self, *, source: Source | None = None) -> list[MaintenanceEntry]:
        """The entries in force (past ``until`` ones dropped first), by model, backend, source."""
        self.expire()
        found = [
            entry
            for name, entries in self._entries.items()
            if source is None or name == source
            for entry in entries.values()
        ]
        return sorted(found, key=lambda e: (e.model, e.backend or "", e.source))

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._entries.values())

    def get(
        self, model: str, backend: str | None, *, source: Source = HTTP
    ) -> MaintenanceEntry | None:
        self.expire()
        return self._entries.get(source, {}).get((model, backend))

    def sources_of(self, model: str, backend: str | None) -> list[Source]:
        """The sources with an entry for (model, backend), in force."""
        self.expire()
        return [name for name, entries in self._entries.items() if (model, backend) in entries]

    def next_end(self) -> float | None:
        """The Unix time the first entry with an ``until`` ends; None when none has one."""
        ends = [
            e.until.timestamp()
            for entries in self._entries.values()
            for e in entries.values()
            if e.until is not None
        ]
        return min(ends, default=None)

    # -- writes --------------------------------------------------------------

    def put(self, model: str, request: MaintenanceRequest) -> MaintenanceEntry:
        """Set (or replace) the HTTP entry of (model, request.backend); ``since`` is now.

        The caller checks that ``until`` is in the future (:func:`until_in_future`).
        """
        entry = MaintenanceEntry(
            model=model,
            backend=request.backend,
            message=request.message,
            until=request.until,
            since=utc_now(self._clock()),
            source=HTTP,
        )
        self._entries.setdefault(HTTP, {})[entry.key] = entry
        self._on_change()
        return entry

    def delete(self, model: str, backend: str | None) -> MaintenanceEntry | None:
        """Remove the HTTP entry of (model, backend); None when there is none."""
        self.expire()
        entry = self._entries.get(HTTP, {}).pop((model, backend), None)
        if entry is not None:
            self._on_change()
        return entry

    def replace_source(self, source: Source, entries: Iterable[MaintenanceEntry]) -> bool:
        """Make ``entries`` the whole set of ``source``'s entries, in one step.

        Each entry's ``source`` is set to ``source``; an entry already held with the
        same message and ``until`` keeps its ``since``. Calls ``on_change`` once, only
        when something changed; True when it did.
        """
        if source == HTTP:
            raise ValueError("HTTP entries are set one by one")
        now = self._clock()
        old = self._entries.get(source, {})
        new: dict[Key, MaintenanceEntry] = {}
        for given in entries:
            if not given.active(now):
                continue
            entry = given.model_copy(update={"source": source})
            kept = old.get(entry.key)
            if kept is not None and (kept.message, kept.until) == (entry.message, entry.until):
                entry = kept
            new[entry.key] = entry
        if new == old:
            return False
        self._entries[source] = new
        self._on_change()
        return True

    def restore(self, entries: Iterable[MaintenanceEntry]) -> None:
        """Load saved HTTP entries (the state file); those already past ``until`` are dropped."""
        now = self._clock()
        book = self._entries.setdefault(HTTP, {})
        for entry in entries:
            if entry.source == HTTP and entry.active(now):
                book[entry.key] = entry

    def expire(self) -> list[MaintenanceEntry]:
        """Drop the entries past their ``until``; one ``on_change`` when any went."""
        now = self._clock()
        gone: list[MaintenanceEntry] = []
        for entries in self._entries.values():
            for key, entry in list(entries.items()):
                if not entry.active(now):
                    del entries[key]
                    gone.append(entry)
        if gone:
            self._on_change()
        return gone

    def now(self) -> float:
        return self._clock()


def until_in_future(request: MaintenanceRequest, now: float) -> str | None:
    """Why ``request.until`` cannot be accepted at Unix time ``now``; None when it can."""
    if request.until is not None and request.until.timestamp() <= now:
        shown = request.until.isoformat().replace("+00:00", "Z")
        return f"'until' ({shown}) is in the past: give a time in the future, or none"
    return None
