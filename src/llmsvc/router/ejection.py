"""Taking a backend out, counted and logged once, and rescuing the requests waiting on it.

A backend that fails a health check (the periodic active check, or a suspicion probe
a waiting request triggered) is taken out as the active check always did: until a
check passes. :meth:`Ejector.hung` also sends every request still waiting for that
backend's first byte elsewhere at once (``Backend.rescue_waiting``): nothing has
reached their clients yet, so they are retried on another backend, not left waiting
for their first-byte timeout. Streams that already sent bytes go on (or end) as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from llmsvc.router.backends import Backend, BackendPool
from llmsvc.router.metrics import Ejection, RouterMetrics

log = logging.getLogger("llmsvc.router.ejection")


class Ejector:
    """Takes backends of one pool out, and counts why."""

    def __init__(
        self,
        *,
        pool: BackendPool,
        metrics: RouterMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._clock = clock

    def hung(self, backend: Backend, reason: Ejection) -> None:
        """``backend`` failed a health check: out until one passes; its waiting requests
        are retried elsewhere. A backend no longer in the pool is left alone."""
        if self._pool.get(backend.name) is not backend:
            return
        was_in = backend.active_ok
        if backend.record_check(False, self._clock()):
            self._pool.health_changed()
        rescued = backend.rescue_waiting()
        if was_in:
            self._metrics.ejections.labels(backend.name, reason).inc()
            log.warning(
                "backend %s ejected (%s): %d waiting request(s) sent elsewhere",
                backend.name,
                reason.value,
                rescued,
                extra={"backend": backend.name, "reason": reason.value},
            )
