"""``least_load``'s scraper: every backend's ``GET /metrics``, every ``--load-scrape-interval``.

One background task (started only for ``--strategy least_load``) scrapes all
backends concurrently (at most ``SCRAPE_CONCURRENCY`` at once), each within
one interval. A good answer replaces the backend's :class:`EngineLoad`; a
failed one (unreachable, timeout, non-2xx, none of the known names) leaves
the last value, which ``least_load`` ignores once it is older than
``loadscore.MAX_AGE_INTERVALS`` intervals.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from llmsvc.core.app import every, owned_task
from llmsvc.router.backends import Backend, BackendPool
from llmsvc.router.loadscore import parse_load

log = logging.getLogger("llmsvc.router.loadscrape")

SCRAPE_CONCURRENCY = 64


class LoadScraper:
    """Scrapes the pool's backends and stores what it reads on each backend."""

    def __init__(
        self,
        *,
        pool: BackendPool,
        session: aiohttp.ClientSession,
        timeout: float,
        registry: CollectorRegistry,
    ) -> None:
        self._pool = pool
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._limit = asyncio.Semaphore(SCRAPE_CONCURRENCY)
        self._failing: set[str] = set()
        self.errors = Counter(
            "llmsvc_router_load_scrape_errors_total",
            "Failed scrapes of a backend's /metrics for least_load.",
            ["backend"],
            registry=registry,
        )

    async def scrape_all(self) -> None:
        backends = list(self._pool)
        if backends:
            await asyncio.gather(*(self._scrape(b) for b in backends))

    async def _scrape(self, backend: Backend) -> None:
        async with self._limit:
            problem = await self._fetch(backend)
        if problem is None:
            if backend.name in self._failing:
                self._failing.discard(backend.name)
                log.info("load scrape of backend %s works again", backend.name)
            return
        self.errors.labels(backend.name).inc()
        if backend.name not in self._failing:  # log the first failure of a run only
            self._failing.add(backend.name)
            log.warning("load scrape of backend %s failed: %s", backend.name, problem)

    async def _fetch(self, backend: Backend) -> str | None:
        """Scrape ``backend`` and store its load; what went wrong, or None."""
        try:
            async with self._session.get(backend.url + "/metrics", timeout=self._timeout) as resp:
                if resp.status != 200:
                    return f"status {resp.status}"
                text = await resp.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return type(exc).__name__
        load = parse_load(text, at=time.monotonic(), in_flight=backend.in_flight)
        if load is None:
            return "no queue or KV-cache metric in its /metrics"
        backend.load = load
        return None


def load_scrape_ctx(
    pool: BackendPool, *, interval: float, registry: CollectorRegistry
) -> Callable[[web.Application], AsyncIterator[None]]:
    """``cleanup_ctx``: the scraper's session and task."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=SCRAPE_CONCURRENCY, keepalive_timeout=60.0)
        session = aiohttp.ClientSession(connector=connector)
        scraper = LoadScraper(pool=pool, session=session, timeout=interval, registry=registry)
        async with owned_task(
            every(interval, scraper.scrape_all, name="load-scrape"), name="load-scrape"
        ):
            yield
        await session.close()

    return ctx
