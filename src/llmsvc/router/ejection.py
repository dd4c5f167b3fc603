"""Taking a backend out, counted and logged once, and rescuing the requests waiting on it.

A backend that fails a health check (the periodic active check, or a suspicion probe
a waiting request triggered) is taken out as the active check always did: until a
check passes. :meth:`Ejector.hung` also sends every request still waiting for that
backend's first byte elsewhere at once (``Backend.rescue_waiting``): nothing has
reached their clients yet, so they are retried on another backend, not left waiting
for their first-byte timeout. Streams that already sent bytes go on (or end) as before.

Outliers (``outliers`` has the rules): :meth:`Ejector.failed` counts a failure the
exchange put on a backend (consecutive failures), :meth:`Ejector.latency_round` (every
:data:`LATENCY_ROUND_S`) compares each backend's first-byte EWMA with its peers'. An
outlier is ejected only while that leaves each of its models within
``--outlier-max-ejection-percent`` and with another healthy backend.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from llmsvc.router.backends import Backend, BackendPool
from llmsvc.router.latency import MIN_SAMPLES, LatencyWindow
from llmsvc.router.metrics import Ejection, Failure, RouterMetrics
from llmsvc.router.outliers import OutlierRules, median_without

LATENCY_ROUND_S = 1.0  # seconds between two comparisons of the backends' first-byte times

log = logging.getLogger("llmsvc.router.ejection")


class Ejector:
    """Takes backends of one pool out, and counts why."""

    def __init__(
        self,
        *,
        pool: BackendPool,
        metrics: RouterMetrics,
        rules: OutlierRules,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self.rules = rules
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

    def failed(self, backend: Backend, kind: Failure, now: float) -> None:
        """A failure counted against ``backend``; enough in a row eject it. Connect errors
        do not count: a backend that refuses connections fails its health check too, and
        must come back as soon as it passes one (a restarted engine)."""
        outlier = backend.outlier
        limit = self.rules.consecutive_failures
        if limit <= 0 or kind is Failure.CONNECT or not outlier.available(now):
            return
        outlier.consecutive += 1
        if outlier.consecutive >= limit:
            self._eject_outlier(backend, Ejection.CONSECUTIVE_FAILURES, now)

    def latency_round(self) -> None:
        """Eject the backends whose first bytes are far slower than their peers'."""
        if self.rules.latency_factor <= 0:
            return
        now = self._clock()
        for model in self._pool.models():
            members = [b for b in self._pool.members(model) if b.healthy(now)]
            for windows in (
                [(b, b.ttfb_stream) for b in members],
                [(b, b.ttfb_plain) for b in members],
            ):
                self._latency_outliers(windows, now)

    def _latency_outliers(self, windows: list[tuple[Backend, LatencyWindow]], now: float) -> None:
        known = sorted(
            ((w.ewma, b) for b, w in windows if w.ewma is not None and len(w) >= MIN_SAMPLES),
            key=lambda pair: pair[0],
        )
        if len(known) < 2:
            return
        ewmas = [ewma for ewma, _ in known]
        for i, (ewma, backend) in enumerate(known):
            if self.rules.is_slow(ewma, median_without(ewmas, i)) and backend.healthy(now):
                self._eject_outlier(backend, Ejection.LATENCY, now)

    def _eject_outlier(self, backend: Backend, reason: Ejection, now: float) -> None:
        if not self._may_eject(backend, now):
            backend.outlier.consecutive = 0
            log.info(
                "backend %s is an outlier (%s) but stays: its models need it",
                backend.name,
                reason.value,
                extra={"backend": backend.name, "reason": reason.value},
            )
            return
        seconds = backend.outlier.eject(now, self.rules, reason.value)
        self._pool.health_changed()
        self._metrics.ejections.labels(backend.name, reason).inc()
        log.warning(
            "backend %s ejected as an outlier (%s) for %gs",
            backend.name,
            reason.value,
            seconds,
            extra={"backend": backend.name, "reason": reason.value},
        )

    def _may_eject(self, backend: Backend, now: float) -> bool:
        """Within --outlier-max-ejection-percent of each of its models, and never the
        last healthy backend of one."""
        for model in backend.models:
            members = self._pool.members(model)
            ejected = sum(1 for b in members if not b.outlier.available(now))
            others = sum(1 for b in members if b is not backend and b.healthy(now))
            if others == 0 or not self.rules.may_eject(len(members), ejected):
                return False
        return True
