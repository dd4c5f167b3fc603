"""Admission of requests into a bounded number of running sequences.

A request runs when a slot is free (``max_num_seqs``) and the KV budget can
hold its reservation (prompt + max output tokens). Otherwise it waits in a
FIFO queue: the head blocks those behind it, as vLLM's scheduler does with
its waiting queue. A request cancelled while waiting leaves the queue; one
cancelled while running frees its slot and its KV at once.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from llmsvc.simengine.model import KvBudget


@dataclass(eq=False, slots=True)
class Ticket:
    """One request's claim: which model (for the per-model gauges) and KV tokens."""

    model: str
    kv_tokens: int
    admitted: asyncio.Future[None] | None = field(default=None)


class Scheduler:
    """FIFO admission under a sequence limit and a KV budget."""

    def __init__(self, *, max_num_seqs: int, kv: KvBudget) -> None:
        self.max_num_seqs = max_num_seqs
        self.kv = kv
        self.running_by_model: Counter[str] = Counter()
        self.waiting_by_model: Counter[str] = Counter()
        self._running = 0
        self._waiting: deque[Ticket] = deque()

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _fits(self, ticket: Ticket) -> bool:
        return self._running < self.max_num_seqs and self.kv.fits(ticket.kv_tokens)

    def _start(self, ticket: Ticket) -> None:
        self._running += 1
        self.running_by_model[ticket.model] += 1
        self.kv.reserve(ticket.kv_tokens)

    def release(self, ticket: Ticket) -> None:
        self._running -= 1
        self.running_by_model[ticket.model] -= 1
        self.kv.release(ticket.kv_tokens)
        self._admit_waiting()

    def _admit_waiting(self) -> None:
        while self._waiting and self._fits(self._waiting[0]):
            ticket = self._waiting.popleft()
            self.waiting_by_model[ticket.model] -= 1
            self._start(ticket)
            assert ticket.admitted is not None
            ticket.admitted.set_result(None)

    async def acquire(self, ticket: Ticket) -> None:
        """Return once ``ticket`` runs; on cancellation leave no trace."""
        if not self._waiting and self._fits(ticket):
            self._start(ticket)
            return
        ticket.admitted = asyncio.get_running_loop().create_future()
        self._waiting.append(ticket)
        self.waiting_by_model[ticket.model] += 1
        try:
            await ticket.admitted
        except asyncio.CancelledError:
            if ticket.admitted.done() and not ticket.admitted.cancelled():
                self.release(ticket)  # admitted, then cancelled before it resumed
            else:
                self._waiting.remove(ticket)
                self.waiting_by_model[ticket.model] -= 1
                self._admit_waiting()  # it may have been the head blocking others
            raise

    @asynccontextmanager
    async def slot(self, ticket: Ticket) -> AsyncIterator[None]:
        """Hold a running slot for the body of the ``async with``."""
        await self.acquire(ticket)
        try:
            yield
        finally:
            self.release(ticket)
