"""Slots and the queue: which backend takes a request now, or where it waits.

With no slots configured anywhere (no ``--backend-concurrency``, no record's
``metadata.max_concurrency``, no saturation threshold: the default) nothing
here runs but one cached check per request (:meth:`Dispatcher.active`): the
strategy picks among the eligible backends as it always did.

With slots, a request goes straight to a backend with room only while its
model's queue is empty and no granted ticket is still on its way; otherwise it
joins the model's :class:`~llmsvc.router.flowqueue.FlowQueues` line (priority
classes, tenant turns) and waits for its turn. Liveness is kept here, without
polling: after every event that may free capacity, :meth:`Dispatcher.pump`
grants the next tickets while the model's backends have more free slots than
tickets granted and not yet dispatched. The events: an attempt on a backend
ends (:meth:`Dispatcher.released`), a ticket joins, a granted ticket is
cancelled, the pool changes (a refresh, a health change: ``BackendPool.listen``),
maintenance changes, and a load scrape completes (saturation ends with no other
event). A granted ticket that finds no room after all (the backend went away,
it became saturated) goes back to the front of its tenant's line.

A retry (the request failed on a backend before any byte reached the client)
does not queue again: it takes an untried backend with room, or else any
untried eligible backend, one over its slots, so that a retry never waits
behind the line it already waited in.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence

from llmsvc.core.errors import ServiceUnavailable
from llmsvc.router.backends import Backend, BackendPool
from llmsvc.router.flowqueue import FlowQueues, Ticket
from llmsvc.router.loadscore import max_load_age
from llmsvc.router.priority import Priority
from llmsvc.router.settings import RouterSettings
from llmsvc.router.slots import SLOTS_KEY, has_room, slots_of

DRAIN_RETRY_AFTER_S = 2  # a draining router's Retry-After: another replica answers at once

OutCheck = Callable[[Backend, str, float], bool]  # per-backend maintenance: takes nothing new


class Draining(ServiceUnavailable):
    """503 ``draining``: this router process is stopping; another one will answer."""

    def __init__(self) -> None:
        super().__init__(
            "The router is shutting down: retry (another replica answers)",
            code="draining",
            headers={"Retry-After": str(DRAIN_RETRY_AFTER_S)},
        )


class Dispatcher:
    """Free slots per model, the queues' liveness, and the pick among backends with room."""

    def __init__(
        self,
        *,
        pool: BackendPool,
        settings: RouterSettings,
        out: OutCheck | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._default = settings.backend_concurrency
        self._waiting = settings.saturation_waiting
        self._kv = settings.saturation_kv
        self._max_age = max_load_age(settings.load_scrape_interval)
        self._headroom = settings.batch_headroom
        self._clock = clock
        self.out = out
        self.queues = FlowQueues(size=settings.queue_size, clock=clock)
        self.queue_timeout = settings.queue_timeout
        self._live: dict[str, int] = {}  # model -> tickets joined and not yet resumed
        self._active_version = -1
        self._active = False
        pool.listen(self.pump_all)

    def active(self) -> bool:
        """Whether any backend has slots or saturation applies (cached per pool refresh)."""
        if self._active_version != self._pool.version:
            self._active_version = self._pool.version
            self._active = (
                self._default is not None
                or self._waiting is not None
                or self._kv is not None
                or any(slots_of(b, None) is not None for b in self._pool)
            )
        return self._active

    def _room(self, backend: Backend, now: float) -> bool:
        return has_room(
            backend,
            default=self._default,
            waiting=self._waiting,
            kv=self._kv,
            now=now,
            max_age=self._max_age,
        )

    def free(self, model: str, now: float) -> float:
        """Requests the model's eligible backends (not out by maintenance) take now."""
        return self._capacity(model, now)[0]

    def _capacity(self, model: str, now: float) -> tuple[float, float]:
        """Free slots now, and all slots, of the model's eligible backends not out by
        maintenance (a backend without room counts toward all, not toward free)."""
        free = total = 0.0
        for backend in self._pool.eligible(model, now):
            if self.out is not None and self.out(backend, model, now):
                continue
            room = self._room(backend, now)
            slots = slots_of(backend, self._default)
            if slots is None:
                if room:  # unlimited and not saturated: room for anything
                    return math.inf, math.inf
                continue
            total += slots
            if room:
                free += slots - backend.in_flight
        return free, total

    def _reserve(self, total: float) -> float:
        """Slots that priority ``batch`` leaves free (``--batch-headroom``)."""
        if not self._headroom or math.isinf(total):
            return 0.0
        return float(math.floor(self._headroom * total + 1e-9))

    def may_start(self, model: str, priority: Priority, now: float) -> bool:
        """Whether a request of ``priority`` finds room now: a free slot, and for ``batch``
        more free slots than the headroom it leaves to the higher classes."""
        free, total = self._capacity(model, now)
        if priority is Priority.BATCH:
            return free > self._reserve(total)
        return free > 0

    def full(self, candidates: Sequence[Backend], now: float) -> list[Backend]:
        """The ``candidates`` with no room now (a pick excludes them)."""
        return [b for b in candidates if not self._room(b, now)]

    def pending(self, model: str) -> int:
        """Tickets granted and not yet dispatched."""
        return self._live.get(model, 0) - self.queues.waiting(model)

    def may_pass(self, model: str) -> bool:
        """Whether a new request may go straight to a backend with room (nobody is in line)."""
        return self._live.get(model, 0) == 0

    def pump(self, model: str) -> None:
        """Grant the next tickets while the model has more free slots than granted tickets."""
        waiting = self.queues.waiting(model)
        if not waiting:
            return
        pending = self._live.get(model, 0) - waiting
        free, total = self._capacity(model, self._clock())
        reserve = self._reserve(total)
        while free > pending and self.queues.grant(model, batch=free - pending > reserve):
            pending += 1

    def pump_all(self) -> None:
        """:meth:`pump` every model with tickets (the pool or maintenance changed, a scrape)."""
        if self._live:
            for model in list(self._live):
                self.pump(model)

    def released(self, backend: Backend) -> None:
        """An attempt on ``backend`` ended: a slot may be free for its models' lines."""
        if self._live:
            for model in backend.models:
                if model in self._live:
                    self.pump(model)

    async def turn(
        self,
        model: str,
        priority: Priority,
        tenant: str,
        timeout: float,
        *,
        seen: Callable[[Ticket], None] | None = None,
    ) -> float:
        """Wait in the model's line until granted with room; the seconds waited.
        ``QueueFull``, ``QueueTimeout`` (or the drain's error) from the queue;
        ``seen``: told the ticket (a held stream's comment lines say its place)."""
        queues = self.queues
        ticket = queues.join(model, priority, tenant)
        if seen is not None:
            seen(ticket)
        self._live[model] = self._live.get(model, 0) + 1
        deadline = ticket.since + timeout
        try:
            self.pump(model)
            while True:
                await queues.wait(ticket, max(0.0, deadline - self._clock()))
                if self.free(model, self._clock()) > 0:
                    break
                queues.requeue(ticket)  # no room after all: the front of its tenant's line
        except asyncio.CancelledError:
            self._leave(model)
            self.pump(model)  # a grant it may have held goes to the next one
            raise
        except BaseException:
            self._leave(model)
            raise
        self._leave(model)
        return self._clock() - ticket.since

    def _leave(self, model: str) -> None:
        live = self._live[model] - 1
        if live:
            self._live[model] = live
        else:
            del self._live[model]


__all__ = ["SLOTS_KEY", "Dispatcher", "Draining"]
