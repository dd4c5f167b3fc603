"""Backends from the registry: its blocking query keeps the pool in step."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from llmsvc.core.records import ServiceRecord
from llmsvc.core.registry_client import RegistryClient, RegistryError
from llmsvc.router.backends import BackendPool
from llmsvc.router.metrics import RouterMetrics

log = logging.getLogger("llmsvc.router.discovery")

# A registry that answers a blocking query at once with an unchanged index does
# not block (an old registry, a proxy in between): poll it at the sync interval.
_NON_BLOCKING_ANSWER_S = 0.05
# The first retry after a failed query; doubled on every further failure, up to the
# sync interval.
_FIRST_RETRY_S = 0.25


class _Retained:
    """Backends kept for a while after the registry returns from an outage.

    A registry restarted without a state file answers with an empty list until
    the babysitters' next heartbeats re-register their engines; routing on that
    answer would refuse every request meanwhile. So the records of the last view
    that the returned registry does not list stay for ``grace`` seconds (or until
    it lists them again); active and passive health still apply to them.
    """

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.records: dict[str, ServiceRecord] = {}
        self.until = 0.0

    def start(self, last_view: list[ServiceRecord], now: float) -> None:
        if self.grace > 0 and last_view:
            self.records = {r.name: r for r in last_view}
            self.until = now + self.grace

    def merge(self, records: list[ServiceRecord], now: float) -> list[ServiceRecord]:
        if now >= self.until:
            self.records = {}
        if not self.records:
            return records
        listed = {r.name for r in records}
        return records + [r for name, r in self.records.items() if name not in listed]

    def remaining(self, now: float) -> float | None:
        return self.until - now if self.records and now < self.until else None


async def watch_registry(
    client: RegistryClient,
    pool: BackendPool,
    metrics: RouterMetrics,
    *,
    wait: float,
    grace: float = 0.0,
    on_change: Callable[[], None] | None = None,
) -> None:
    """Keep ``pool`` in step with the registry until cancelled.

    The first query returns at once; the next ones block until the registry's
    change index moves (or ``wait`` passes; less while backends are retained).
    On errors the last view stays and the query is retried after 0.25 s, then
    after twice as long each time, up to ``wait`` seconds; when the registry is
    back, what it no longer lists is kept for ``grace`` seconds (:class:`_Retained`).
    """
    index: int | None = None
    up: bool | None = None
    retry = _FIRST_RETRY_S
    view: list[ServiceRecord] = []
    retained = _Retained(grace)
    while True:
        started = time.monotonic()
        remaining = retained.remaining(started)
        blocking = wait if remaining is None else max(0.05, min(wait, remaining))
        try:
            # Every type: babysitter records name models that are known though not up.
            records, new_index = await client.services(
                index=index, wait=blocking if index is not None else None
            )
        except (RegistryError, ValueError) as exc:  # ValueError: an answer we cannot read
            if up is not False:
                log.warning("registry unavailable, keeping the last view: %s", exc)
                retry = _FIRST_RETRY_S
            up = False
            metrics.registry_up.set(0)
            # A slow answer or a restart is often over at once: retry soon, then back off
            # to the sync interval.
            await asyncio.sleep(min(retry, wait))
            retry *= 2
            continue
        now = time.monotonic()
        if up is False:
            retained.start(view, now)
        if up is not True:
            log.info("registry reachable at %s", client.base_url)
        up = True
        metrics.registry_up.set(1)
        view = retained.merge(records, now)
        pool.set_registry(view)
        if on_change is not None:
            on_change()
        unchanged = index is not None and new_index == index
        if unchanged and now - started < _NON_BLOCKING_ANSWER_S:
            await asyncio.sleep(blocking)
        # An index that went backwards means a restarted registry: start over.
        index = new_index if index is None or new_index >= index else 0
