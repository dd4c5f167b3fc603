"""The supervisor's waits: sleeps that an exit or a request cuts short, and drain waits.

:class:`Alarm` is how the API interrupts the supervisor (``POST /restart``,
``POST /model``, shutdown) with a reason; :meth:`Alarm.pause` sleeps until a
timeout, the engine's exit or an interruption. :class:`Drainer` takes the
engine out of the registry and waits (:func:`wait_idle`) for its in-flight
requests to end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Literal

import aiohttp

from llmsvc.babysitter import probes
from llmsvc.babysitter.engines import Identity
from llmsvc.babysitter.lifecycle import Reason
from llmsvc.babysitter.registration import Registrar

DRAIN_GRACE = 2.0  # seconds to wait when neither gauges nor /proc/net/tcp say anything
DRAIN_POLL = 0.1
DRAIN_SETTLE = 0.5  # seconds for routers to hear of a deregistration before the engine stops

Wake = Literal["exited", "interrupted", "timeout"]


class Alarm:
    """An interruption with a reason, set by the API, cleared at each engine start."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.reason = Reason.REQUESTED

    def ring(self, reason: Reason) -> None:
        self.reason = reason
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    async def pause(self, waiter: asyncio.Future[int] | None, timeout: float) -> Wake:
        """Sleep ``timeout`` s unless the process (``waiter``) exits or the alarm rings."""
        if waiter is not None and waiter.done():
            return "exited"
        if self._event.is_set():
            return "interrupted"
        rung = asyncio.ensure_future(self._event.wait())
        waits: set[asyncio.Future[Any]] = {rung}
        if waiter is not None:
            waits.add(waiter)
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            rung.cancel()
        if waiter is not None and waiter.done():
            return "exited"
        return "interrupted" if self._event.is_set() else "timeout"


async def wait_idle(
    session: aiohttp.ClientSession,
    *,
    base_url: str,
    port: int,
    running: Callable[[], bool],
    deadline: float,
    clock: Callable[[], float],
    probe_timeout: float,
) -> int:
    """Poll the engine's in-flight requests until 0 or ``deadline``; how many are left.

    The engine's own gauges first; without them the open connections to its port;
    without even those, a fixed :data:`DRAIN_GRACE`.
    """
    while running():
        count = await probes.in_flight(session, base_url, timeout=probe_timeout)
        if count is None:
            count = probes.open_connections(port)
        left = deadline - clock()
        if count is None:
            await asyncio.sleep(max(0.0, min(DRAIN_GRACE, left)))
            return 0
        if count == 0 or left <= 0:
            return count
        await asyncio.sleep(min(DRAIN_POLL, left))
    return 0


class Drainer:
    """Drains the engine: out of the registry, then a wait for its in-flight requests."""

    def __init__(
        self,
        *,
        registrar: Registrar,
        session: aiohttp.ClientSession,
        drain_timeout: float,
        probe_timeout: float,
        running: Callable[[], bool],
        clock: Callable[[], float],
    ) -> None:
        self._registrar = registrar
        self._session = session
        self._drain_timeout = drain_timeout
        self._probe_timeout = probe_timeout
        self._running = running
        self._clock = clock

    async def withdraw_and_wait(self, ident: Identity) -> int:
        """Deregister the engine, then wait (``--drain-timeout``) for its in-flight requests;
        how many are left."""
        registered = self._registrar.registered().get("engine", False)
        await self._registrar.withdraw_engine()
        deadline = self._clock() + self._drain_timeout
        if registered:  # routers hear of it within milliseconds (blocking query)
            await asyncio.sleep(min(DRAIN_SETTLE, self._drain_timeout))
        return await wait_idle(
            self._session,
            base_url=ident.engine_url(),
            port=ident.port,
            running=self._running,
            deadline=deadline,
            clock=self._clock,
            probe_timeout=self._probe_timeout,
        )
