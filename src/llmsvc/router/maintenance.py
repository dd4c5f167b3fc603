"""The router's view of the registry's maintenance entries, and the 503 they cause.

The registry holds the entries (``GET /maintenance``) so that every router
replica obeys the same ones; :func:`watch_maintenance` keeps a
:class:`Maintenance` board in step with them by the registry's blocking query,
as :func:`llmsvc.router.discovery.watch_registry` does with the records. The
request path asks the board (a dictionary lookup: no cost without entries):

- :meth:`Maintenance.check`: a model-wide entry answers **new** requests 503
  ``maintenance`` with the entry's message and ``Retry-After`` counting down to
  its ``until`` (60 s without one). Requests already running are not touched.
- :meth:`Maintenance.backend_out`: a backend with an entry of its own takes no
  new request; when every eligible backend is out, the answer is
  :class:`InMaintenance` with that entry's message (:meth:`Maintenance.backend_entry`).

An entry stops applying at its ``until`` even before the registry drops it.
While the registry is unreachable the last view stays. A router with only
static services (no ``--registry-url``) has no entries: maintenance never
applies there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from llmsvc.core.errors import ServiceUnavailable
from llmsvc.core.maintenance import MaintenanceEntry
from llmsvc.core.registry_client import RegistryClient, RegistryError

log = logging.getLogger("llmsvc.router.maintenance")

DEFAULT_RETRY_AFTER_S = 60.0
"""Seconds of ``Retry-After`` for an entry without an end time."""

# As the records' watch (router.discovery): a registry that answers a blocking query at
# once with an unchanged index does not block; the first retry after a failure, doubled
# on every further failure up to the sync interval.
_NON_BLOCKING_ANSWER_S = 0.05
_FIRST_RETRY_S = 0.25


class InMaintenance(ServiceUnavailable):
    """503 ``maintenance``: the operator's message, ``Retry-After`` from the entry's end."""

    def __init__(self, entry: MaintenanceEntry, now: float) -> None:
        retry = entry.retry_after(now, DEFAULT_RETRY_AFTER_S)
        super().__init__(entry.message, code="maintenance", headers={"Retry-After": str(retry)})
        self.entry = entry


def _last_to_end(entries: list[MaintenanceEntry], now: float) -> MaintenanceEntry | None:
    """The entry in force that ends last (one without an end first): what a client waits for."""
    best: MaintenanceEntry | None = None
    for entry in entries:
        if not entry.active(now):
            continue
        if best is None or (
            best.until is not None and (entry.until is None or entry.until > best.until)
        ):
            best = entry
    return best


class Maintenance:
    """The maintenance entries this router obeys, by model and by (backend, model)."""

    def __init__(self) -> None:
        self._entries: list[MaintenanceEntry] = []
        self._models: dict[str, list[MaintenanceEntry]] = {}
        self._backends: dict[tuple[str, str], list[MaintenanceEntry]] = {}

    def set(self, entries: Iterable[MaintenanceEntry]) -> None:
        """Replace every entry (the registry's whole list)."""
        listed = list(entries)
        models: dict[str, list[MaintenanceEntry]] = {}
        backends: dict[tuple[str, str], list[MaintenanceEntry]] = {}
        for entry in listed:
            if entry.backend is None:
                models.setdefault(entry.model, []).append(entry)
            else:
                backends.setdefault((entry.backend, entry.model), []).append(entry)
        self._entries, self._models, self._backends = listed, models, backends

    def check(self, model: str, now: float) -> None:
        """Raise :class:`InMaintenance` when a model-wide entry applies at Unix time ``now``."""
        entries = self._models.get(model)
        if entries:
            entry = _last_to_end(entries, now)
            if entry is not None:
                raise InMaintenance(entry, now)

    def backend_entry(self, name: str, model: str, now: float) -> MaintenanceEntry | None:
        """The entry that takes backend ``name`` out for ``model`` at ``now``; None if none."""
        entries = self._backends.get((name, model))
        return _last_to_end(entries, now) if entries else None

    def backend_out(self, name: str, model: str, now: float) -> bool:
        """True when backend ``name`` takes no new request for ``model`` (its own entry)."""
        return bool(self._backends) and self.backend_entry(name, model, now) is not None

    @property
    def any_backend_entry(self) -> bool:
        """Whether some entry names one backend (else no backend needs a look)."""
        return bool(self._backends)

    def entries(self) -> list[MaintenanceEntry]:
        """The entries as the registry last listed them."""
        return list(self._entries)


def _describe(entries: list[MaintenanceEntry]) -> str:
    if not entries:
        return "none"
    return ", ".join(e.model + (f" (backend {e.backend})" if e.backend else "") for e in entries)


async def watch_maintenance(
    client: RegistryClient,
    board: Maintenance,
    *,
    wait: float,
    on_change: Callable[[], None],
) -> None:
    """Keep ``board`` in step with the registry's ``/maintenance`` until cancelled.

    The first query returns at once; the next ones block until the registry's change
    index moves (or ``wait`` passes). On errors the last view stays and the query is
    retried after 0.25 s, then after twice as long each time, up to ``wait`` seconds.
    ``on_change`` is called after every answer whose entries differ from the last.
    """
    index: int | None = None
    up: bool | None = None
    retry = _FIRST_RETRY_S
    while True:
        started = time.monotonic()
        try:
            entries, new_index = await client.maintenance(
                index=index, wait=wait if index is not None else None
            )
        except (RegistryError, ValueError) as exc:  # ValueError: an answer we cannot read
            if up is not False:
                log.warning("maintenance entries unavailable, keeping the last view: %s", exc)
                retry = _FIRST_RETRY_S
            up = False
            await asyncio.sleep(min(retry, wait))
            retry *= 2
            continue
        up = True
        if entries != board.entries():
            board.set(entries)
            log.info("maintenance entries: %s", _describe(entries))
            on_change()
        unchanged = index is not None and new_index == index
        if unchanged and time.monotonic() - started < _NON_BLOCKING_ANSWER_S:
            await asyncio.sleep(wait)
        # An index that went backwards means a restarted registry: start over.
        index = new_index if index is None or new_index >= index else 0
