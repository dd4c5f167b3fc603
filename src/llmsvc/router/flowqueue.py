"""The per-model queue of requests waiting for a backend's slot: priorities, tenant
turns, eviction, timeouts.

When every eligible backend of a model is at its slots (``slots``), a request
takes a :class:`Ticket` (:meth:`FlowQueues.join`) and waits (:meth:`FlowQueues.wait`)
until the router gives it the turn (:meth:`FlowQueues.grant`, once per freed slot).
The order of turns:

- **strict priority**: every waiting ``critical`` ticket goes before any
  ``standard`` one, and so on down to ``batch``;
- **tenant turns** within a class: the tenants with tickets take one turn each
  in rotation (round robin), so a tenant sending 20 times another's rate gets
  no more turns than it while both wait; a tenant's own tickets go first come,
  first served.

A tenant with nothing waiting in a class goes first when its ticket comes (after
the other tenants new before it, fq_codel's "new flows"): a light tenant's
request waits for the next turn, not a whole rotation behind a heavy one.

Each model's queue holds at most ``size`` tickets. A newcomer to a full queue
evicts one ticket of the lowest class present below its own (within that class
the tenant with the most tickets loses its newest); with nothing below, a tenant
of its own class holding at least two tickets more than the newcomer's tenant
loses its newest; otherwise the newcomer is refused: :class:`QueueFull`, 429. A
ticket not given the turn within its timeout gets :class:`QueueTimeout`, 503.

Pure asyncio: one future per waiting ticket, one loop timer per wait, no
polling. Per model, per class, an ordered dict of tenant -> ordered set of
tickets: joining, granting, leaving (timeout, client gone) and requeueing are
O(1); eviction looks over the tenants of one class (O(tenants)). The queue does
not know the backends: the router calls :meth:`FlowQueues.grant` whenever a
slot may have freed (its ``pump``), and :meth:`FlowQueues.granted` says how many
turns are given but not yet taken.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from llmsvc.core.errors import ApiError, echoed
from llmsvc.router.priority import Priority


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def _shown(seconds: float) -> str:
    return f"{seconds:.0f}" if seconds >= 10 else f"{seconds:.1f}"


class QueueFull(ApiError):
    """429 ``queue_full``: the model's queue is full and nothing below this request's
    class could make room, or it was evicted for a request of a higher class."""

    status = 429

    def __init__(
        self, model: str, *, evicted: bool, retry_after: float, waiting: int | None = None
    ) -> None:
        if evicted:
            message = (
                f"Evicted from the queue for model '{echoed(model)}' by a request of a "
                "higher priority"
            )
        else:
            held = f" ({waiting} waiting)" if waiting is not None else ""
            message = f"Queue for model '{echoed(model)}' is full{held}"
        super().__init__(message, code="queue_full", headers=_retry_after(retry_after))
        self.evicted = evicted


class QueueTimeout(ApiError):
    """503 ``queue_timeout``: no slot came free within the queue timeout."""

    status = 503

    def __init__(self, model: str, waited: float, retry_after: float) -> None:
        super().__init__(
            f"Waited {_shown(waited)}s in the queue for model '{echoed(model)}' without a "
            "free slot; every backend is busy, retry later",
            code="queue_timeout",
            headers=_retry_after(retry_after),
        )
        self.waited = waited


class _State(Enum):
    QUEUED = "queued"  # in its tenant's line
    GRANTED = "granted"  # given the turn; wait() has not returned yet
    TAKEN = "taken"  # wait() returned: the request goes on to a backend
    GONE = "gone"  # evicted, timed out, closed or its client left


@dataclass(eq=False)
class Ticket:
    """One request's place in a model's queue (compared and hashed by identity)."""

    model: str
    priority: Priority
    tenant: str
    since: float  # clock() at join
    _state: _State = field(default=_State.QUEUED, init=False, repr=False)
    _future: asyncio.Future[None] | None = field(default=None, init=False, repr=False)
    _error: ApiError | None = field(default=None, init=False, repr=False)
    _grants_at_join: int = field(default=0, init=False, repr=False)


class _ClassQueue:
    """One class's tickets: tenant -> its line, the tenants in turn order."""

    __slots__ = ("count", "fresh", "lines")

    def __init__(self) -> None:
        self.lines: OrderedDict[str, OrderedDict[Ticket, None]] = OrderedDict()
        self.count = 0
        # Tenants that had nothing waiting when their ticket came, not yet served: they
        # go first (in their order of arrival), as fq_codel's new flows do, so a light
        # tenant's request waits for the next turn, not for a whole rotation.
        self.fresh: dict[str, None] = {}

    def push(self, ticket: Ticket, *, front: bool = False) -> None:
        line = self.lines.get(ticket.tenant)
        if line is None:
            line = self.lines[ticket.tenant] = OrderedDict()
            self.lines.move_to_end(ticket.tenant, last=False)
            if not front:  # (a returning ticket keeps its tenant's turn: the front)
                for tenant in reversed(self.fresh):  # behind the tenants new before it
                    self.lines.move_to_end(tenant, last=False)
                self.fresh[ticket.tenant] = None
        line[ticket] = None
        if front:
            line.move_to_end(ticket, last=False)
        self.count += 1

    def pop_next(self) -> Ticket:
        """The first ticket of the tenant whose turn it is; that tenant goes last."""
        tenant, line = next(iter(self.lines.items()))
        ticket, _ = line.popitem(last=False)
        self.fresh.pop(tenant, None)
        if line:
            self.lines.move_to_end(tenant)
        else:
            del self.lines[tenant]
        self.count -= 1
        return ticket

    def heaviest(self) -> tuple[str, int]:
        """The tenant with the most tickets (the first such in turn order), and how many."""
        tenant = max(self.lines, key=lambda name: len(self.lines[name]))
        return tenant, len(self.lines[tenant])

    def pop_evictee(self) -> Ticket:
        """The newest ticket of the tenant with the most (the first such in turn order)."""
        tenant, _ = self.heaviest()
        line = self.lines[tenant]
        ticket, _ = line.popitem(last=True)
        if not line:
            del self.lines[tenant]
            self.fresh.pop(tenant, None)
        self.count -= 1
        return ticket

    def remove(self, ticket: Ticket) -> None:
        line = self.lines[ticket.tenant]
        del line[ticket]
        if not line:
            del self.lines[ticket.tenant]
            self.fresh.pop(ticket.tenant, None)
        self.count -= 1

    def ahead(self, ticket: Ticket) -> int:
        """Tickets of this class granted before ``ticket`` if nothing joins meanwhile."""
        own = self.lines[ticket.tenant]
        index = next(i for i, queued in enumerate(own) if queued is ticket)
        before = True
        total = index
        for tenant, line in self.lines.items():
            if tenant == ticket.tenant:
                before = False
                continue
            total += min(len(line), index + (1 if before else 0))
        return total


class _ModelQueue:
    __slots__ = ("classes", "granted", "grants", "queued")

    def __init__(self) -> None:
        self.classes = {p: _ClassQueue() for p in Priority}
        self.queued = 0  # tickets in a line
        self.granted = 0  # tickets given the turn whose wait() has not returned
        self.grants = 0  # turns given so far (the rate a timed-out ticket's Retry-After uses)


class FlowQueues:
    """Every model's queue (see the module docstring); ``size`` tickets per model."""

    def __init__(self, *, size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._size = size
        self._clock = clock
        self._queues: dict[str, _ModelQueue] = {}
        self._closed: Callable[[Ticket], ApiError] | None = None

    def join(self, model: str, priority: Priority, tenant: str) -> Ticket:
        """A new ticket at the end of its tenant's line; QueueFull if there is no room
        (after evicting a lower class's ticket when there is one)."""
        ticket = Ticket(model=model, priority=priority, tenant=tenant, since=self._clock())
        if self._closed is not None:
            ticket._state = _State.GONE
            raise self._closed(ticket)
        queue = self._queues.get(model)
        if queue is None:
            queue = self._queues[model] = _ModelQueue()
        if queue.queued >= self._size:
            victim_class = next(
                (
                    queue.classes[p]
                    for p in reversed(Priority)
                    if p > priority and queue.classes[p].count
                ),
                None,
            )
            if victim_class is None and self._crowded(queue.classes[priority], tenant):
                victim_class = queue.classes[priority]  # its heaviest tenant gives way
            if victim_class is None:
                ticket._state = _State.GONE
                self._tidy(model)
                raise QueueFull(model, evicted=False, retry_after=1, waiting=queue.queued)
            victim = victim_class.pop_evictee()
            queue.queued -= 1
            self._fail(victim, QueueFull(model, evicted=True, retry_after=1))
        queue.classes[priority].push(ticket)
        queue.queued += 1
        ticket._grants_at_join = queue.grants
        return ticket

    @staticmethod
    def _crowded(line: _ClassQueue, tenant: str) -> bool:
        """Whether, in a full queue, one tenant of ``tenant``'s own class holds at least two
        tickets more than ``tenant``: then that tenant's newest ticket is evicted rather
        than the newcomer refused (a tenant filling the queue cannot lock others out)."""
        if not line.count:
            return False
        heavy, count = line.heaviest()
        own = len(line.lines.get(tenant, ()))
        return heavy != tenant and count >= own + 2

    async def wait(self, ticket: Ticket, timeout: float) -> None:
        """Return once :meth:`grant` gives ``ticket`` the turn.

        Raises QueueTimeout after ``timeout`` seconds, QueueFull when evicted, the
        :meth:`close` error when drained. Cancelled (the client left), the ticket
        leaves its line; a turn it was given but had not taken passes to the next.
        """
        if ticket._state is _State.GRANTED:
            self._taken(ticket)
            return
        if ticket._state is not _State.QUEUED:
            if ticket._error is not None:
                raise ticket._error
            raise RuntimeError(f"ticket is {ticket._state.value}, not queued")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        ticket._future = future
        timer = loop.call_later(max(0.0, timeout), self._expire, ticket)
        try:
            await future
        except asyncio.CancelledError:
            self._abandon(ticket)
            raise
        finally:
            timer.cancel()
            ticket._future = None
        self._taken(ticket)

    def grant(self, model: str, *, batch: bool = True) -> bool:
        """Give the turn to the next ticket of ``model``; False when none waits (``batch``
        False: none of a class above ``batch`` waits — the batch line is left waiting)."""
        queue = self._queues.get(model)
        if queue is None:
            return False
        for priority in Priority:
            if priority is Priority.BATCH and not batch:
                return False
            line = queue.classes[priority]
            while line.count:
                ticket = line.pop_next()
                queue.queued -= 1
                future = ticket._future
                if future is not None and future.done():  # cancelled, not yet resumed
                    ticket._state = _State.GONE
                    continue
                ticket._state = _State.GRANTED
                queue.granted += 1
                queue.grants += 1
                if future is not None:
                    future.set_result(None)
                return True
        self._tidy(model)
        return False

    def requeue(self, ticket: Ticket) -> None:
        """A ticket whose turn found no room after all goes back to the front of its
        tenant's line (its tenant keeps its place in the rotation); then wait() again.

        The queue's size does not apply: the ticket had its place already. After
        :meth:`close` the ticket's next wait() raises the drain's error instead.
        """
        if ticket._state is _State.GRANTED:
            self._taken(ticket)
        if ticket._state is not _State.TAKEN:
            raise RuntimeError(
                f"only a granted ticket can be requeued, not a {ticket._state.value} one"
            )
        if self._closed is not None:  # draining: its next wait() raises the drain's error
            self._fail(ticket, self._closed(ticket))
            return
        queue = self._queues.get(ticket.model)
        if queue is None:
            queue = self._queues[ticket.model] = _ModelQueue()
        ticket._state = _State.QUEUED
        ticket._error = None
        queue.classes[ticket.priority].push(ticket, front=True)
        queue.queued += 1
        ticket._grants_at_join = queue.grants

    def waiting(self, model: str) -> int:
        """Tickets of ``model`` in a line (not yet given the turn)."""
        queue = self._queues.get(model)
        return queue.queued if queue is not None else 0

    def granted(self, model: str) -> int:
        """Tickets of ``model`` given the turn whose wait() has not returned yet (the
        router's ``pump`` counts them as taking a slot)."""
        queue = self._queues.get(model)
        return queue.granted if queue is not None else 0

    def depth(self, model: str) -> dict[Priority, int]:
        """Tickets waiting per class (every class, zeros included)."""
        queue = self._queues.get(model)
        if queue is None:
            return dict.fromkeys(Priority, 0)
        return {p: queue.classes[p].count for p in Priority}

    def ahead(self, ticket: Ticket) -> int:
        """Tickets that would be given the turn before ``ticket`` (0 once it left its line)."""
        queue = self._queues.get(ticket.model)
        if queue is None or ticket._state is not _State.QUEUED:
            return 0
        higher = sum(queue.classes[p].count for p in Priority if p < ticket.priority)
        return higher + queue.classes[ticket.priority].ahead(ticket)

    def models(self) -> list[str]:
        """Models with tickets waiting."""
        return [model for model, queue in self._queues.items() if queue.queued]

    def close(self, make_error: Callable[[Ticket], ApiError]) -> None:
        """Drain: every waiting ticket's wait() raises ``make_error(ticket)``, and so does
        every later :meth:`join`. Tickets already given the turn keep it."""
        self._closed = make_error
        for model, queue in list(self._queues.items()):
            for line in queue.classes.values():
                while line.count:
                    ticket = line.pop_next()
                    queue.queued -= 1
                    self._fail(ticket, make_error(ticket))
            self._tidy(model)

    def _expire(self, ticket: Ticket) -> None:
        queue = self._queues.get(ticket.model)
        if queue is None or ticket._state is not _State.QUEUED:
            return
        waited = max(0.0, self._clock() - ticket.since)
        served = queue.grants - ticket._grants_at_join
        # At the pace the queue served others during this wait, the time until the
        # tickets still ahead would be served; never more than the wait itself.
        pace = (self.ahead(ticket) + 1) * waited / served if served > 0 else waited
        queue.classes[ticket.priority].remove(ticket)
        queue.queued -= 1
        self._fail(ticket, QueueTimeout(ticket.model, waited, retry_after=min(pace, waited)))
        self._tidy(ticket.model)

    def _fail(self, ticket: Ticket, error: ApiError) -> None:
        """``ticket`` (already out of its line) ends with ``error``."""
        ticket._state = _State.GONE
        future = ticket._future
        if future is None:
            ticket._error = error  # wait() not called yet: it raises this
        elif not future.done():
            future.set_exception(error)

    def _abandon(self, ticket: Ticket) -> None:
        """The waiting task was cancelled: leave the line, or pass on a turn not taken."""
        future = ticket._future
        if future is not None and future.done() and not future.cancelled():
            future.exception()  # retrieved: no "never retrieved" warning
        queue = self._queues.get(ticket.model)
        state, ticket._state = ticket._state, _State.GONE
        if queue is None:
            return
        if state is _State.QUEUED:
            queue.classes[ticket.priority].remove(ticket)
            queue.queued -= 1
        elif state is _State.GRANTED:
            queue.granted -= 1
            self.grant(ticket.model)
        self._tidy(ticket.model)

    def _taken(self, ticket: Ticket) -> None:
        ticket._state = _State.TAKEN
        queue = self._queues.get(ticket.model)
        if queue is not None:
            queue.granted -= 1
            self._tidy(ticket.model)

    def _tidy(self, model: str) -> None:
        queue = self._queues.get(model)
        if queue is not None and not queue.queued and not queue.granted:
            del self._queues[model]
