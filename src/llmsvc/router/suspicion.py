"""Suspicion probes: a request that waits finds a hung backend in about 1.5 seconds.

Every attempt arms a timer (:meth:`Suspicion.watch`) that the proxy cancels at the
attempt's first byte. When it fires (``--suspect-after`` seconds without a first
byte) and the backend has sent nothing at all, to any request, for as long, the
router probes its ``/health`` at once (``health.check_backend``, ``--health-timeout``).
At most one probe per backend is in flight, and not more than one starts per
``--health-timeout``. A failed probe ejects the backend (``ejection.Ejector.hung``):
out until an active check passes, its waiting requests retried elsewhere.

Real engines answer ``/health`` without going through their queue, so a busy engine
passes (and one that streams to other clients is not even probed); a hung one (a
SIGSTOPped process, a wedged event loop) does not answer. Probing only the backends
that a request is waiting on, rather than every backend every second, keeps the cost
at what the traffic asks: an idle fleet of 1,000 backends costs no probes at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import aiohttp

from llmsvc.core.app import supervised
from llmsvc.router.backends import Backend
from llmsvc.router.ejection import Ejector
from llmsvc.router.health import check_backend
from llmsvc.router.metrics import Ejection, RouterMetrics

log = logging.getLogger("llmsvc.router.suspicion")


class Suspicion:
    """The suspicion probes of one router; :meth:`close` cancels those in flight."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        ejector: Ejector,
        metrics: RouterMetrics,
        after: float,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._ejector = ejector
        self._metrics = metrics
        self._after = after
        self._timeout = timeout
        self._clock = clock
        self._probes: set[asyncio.Task[None]] = set()

    def watch(self, backend: Backend) -> asyncio.TimerHandle | None:
        """A timer that suspects ``backend`` unless cancelled (at the first byte) in time;
        None when suspicion is off (``--suspect-after 0``)."""
        if self._after <= 0:
            return None
        return asyncio.get_running_loop().call_later(self._after, self._suspect, backend)

    def _suspect(self, backend: Backend) -> None:
        now = self._clock()
        if (
            backend.probing
            or not backend.active_ok  # already out
            or now - backend.probed_at < self._timeout
            or now - backend.last_seen < self._after  # it answers others: busy, not hung
        ):
            return
        backend.probing = True
        backend.probed_at = now
        task = supervised(self._probe(backend), name=f"suspect-probe {backend.name}")
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    async def _probe(self, backend: Backend) -> None:
        try:
            ok = await check_backend(self._session, backend, self._timeout)
        finally:
            backend.probing = False
        self._metrics.suspect_probes.labels(backend.name, "passed" if ok else "failed").inc()
        if ok:
            log.debug("backend %s is slow but answers its health check", backend.name)
            return
        self._ejector.hung(backend, Ejection.SUSPECT_PROBE)

    async def close(self) -> None:
        """Cancel the probes in flight and wait for them."""
        probes = list(self._probes)
        for task in probes:
            task.cancel()
        for task in probes:
            with contextlib.suppress(asyncio.CancelledError):
                await task
