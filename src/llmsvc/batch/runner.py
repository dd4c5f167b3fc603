"""The batch runner: lines on spare capacity, earliest deadline first (skeleton)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import aiohttp

from llmsvc.batch.concurrency import Aimd
from llmsvc.batch.metrics import BatchMetrics
from llmsvc.batch.settings import BatchSettings
from llmsvc.batch.sla import SlaView, assess
from llmsvc.batch.store import BatchRecord, Store


class Runner:
    """Runs every active batch's lines through the router."""

    def __init__(
        self,
        store: Store,
        settings: BatchSettings,
        metrics: BatchMetrics,
        *,
        clock: Callable[[], float] = time.time,
        session_factory: Callable[[], aiohttp.ClientSession] | None = None,
    ) -> None:
        self._store = store
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._session_factory = session_factory
        self._aimd = Aimd(settings.initial_concurrency, settings.max_concurrency)

    async def run(self) -> None:
        """Background task: recover, then run lines until cancelled."""
        raise NotImplementedError

    def wake(self) -> None:
        """A batch was created: look for work now."""

    def cancel(self, batch_id: str) -> None:
        """The API set the batch ``cancelling``: end its pending lines, finalize."""

    def sla(self, batch: BatchRecord) -> SlaView:
        """The batch's current SLA view."""
        return assess(batch, batch.counts, None, self._clock(), self._settings.at_risk_window_used)

    def report(self) -> dict[str, Any]:
        """GET /sla/report's body."""
        return {"batches": [], "overall": {}}

    @property
    def concurrency(self) -> int:
        """The current window."""
        return self._aimd.window
