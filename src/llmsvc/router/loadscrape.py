"""The load scraper: every backend's ``GET /metrics``, every ``--load-scrape-interval``.

One background task (started for the strategies that read engine load) scrapes all
backends concurrently (at most ``SCRAPE_CONCURRENCY`` at once), each within
one interval. A good answer replaces the backend's :class:`EngineLoad`; a
failed one (unreachable, timeout, non-2xx, none of the known names) leaves
the last value, which ``least_load`` ignores once it is older than
``loadscore.MAX_AGE_INTERVALS`` intervals.

A llama.cpp engine exports no KV-cache series; its slot count (``GET /props``,
``total_slots``) turns its busy slots into one (``loadscore``), and its slots' context
(``default_generation_settings.n_ctx`` × ``total_slots``) is its cache capacity
(``EngineLoad.cache_tokens``; other engines say theirs in ``/metrics``). Both are read
once per engine life (the record's origin and registration time), again after
``SLOTS_RETRY_S`` if they could not be read. An engine that exports nothing for
one of the three inputs is named in a WARNING once per backend: that input
reads as 0 in its score.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from llmsvc.core.app import every, owned_task
from llmsvc.router.backends import Backend, BackendPool
from llmsvc.router.loadscore import EngineLoad, is_llamacpp, needs_slots, parse_load

log = logging.getLogger("llmsvc.router.loadscrape")

SCRAPE_CONCURRENCY = 64
SLOTS_RETRY_S = 30.0  # a /props that could not be read is asked again after this long

_Life = tuple[str, float]  # an engine's origin and registration time: one process's life


@dataclass(slots=True)
class _Slots:
    """A llama.cpp engine's slot count and context as read from ``/props`` for one life."""

    life: _Life
    count: int | None  # None: not readable
    cache_tokens: int | None  # n_ctx per slot × slots; None: not readable
    read_at: float


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
        self._slots: dict[str, _Slots] = {}  # by backend name
        self._warned: dict[str, tuple[str, ...]] = {}  # the missing inputs last warned about
        self.errors = Counter(
            "llmsvc_router_load_scrape_errors_total",
            "Failed scrapes of a backend's /metrics for least_load.",
            ["backend"],
            registry=registry,
        )

    async def scrape_all(self) -> None:
        backends = [b for b in self._pool if not b.standby]  # stopped or asleep: nothing to read
        names = {b.name for b in backends}
        for gone in [n for n in self._slots.keys() | self._warned.keys() if n not in names]:
            self._slots.pop(gone, None)
            self._warned.pop(gone, None)
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
        props = await self._props(backend) if is_llamacpp(text) else None
        load = parse_load(
            text,
            at=time.monotonic(),
            in_flight=backend.in_flight,
            slots=props.count if props is not None and needs_slots(text) else None,
            cache_tokens=props.cache_tokens if props is not None else None,
        )
        if load is None:
            return "no queue or KV-cache metric in its /metrics"
        self._warn_missing(backend, load)
        backend.load = load
        return None

    def _warn_missing(self, backend: Backend, load: EngineLoad) -> None:
        """Once per backend (and again if it changes): what its score reads as 0."""
        if self._warned.get(backend.name, ()) == load.missing:
            return
        self._warned[backend.name] = load.missing
        if load.missing:
            log.warning(
                "backend %s exports no %s in its /metrics: least_load and scored read it as 0",
                backend.name,
                " and no ".join(load.missing),
                extra={"backend": backend.name},
            )

    async def _props(self, backend: Backend) -> _Slots:
        """llama.cpp's slots and context (``GET /props``) for the engine's current life."""
        life = (backend.url, backend.record.registered_at)
        now = time.monotonic()
        known = self._slots.get(backend.name)
        fresh = known is not None and known.life == life
        if known is not None and fresh and (known.count or now - known.read_at < SLOTS_RETRY_S):
            return known
        count, cache_tokens = await self._read_props(backend)
        read = _Slots(life, count, cache_tokens, now)
        self._slots[backend.name] = read
        return read

    async def _read_props(self, backend: Backend) -> tuple[int | None, int | None]:
        """``total_slots``, and the slots' context in tokens; None for what is unreadable."""
        try:
            async with self._session.get(backend.url + "/props", timeout=self._timeout) as resp:
                if resp.status != 200:
                    return None, None
                props = await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
            return None, None
        if not isinstance(props, dict):
            return None, None
        count = _positive(props.get("total_slots"))
        settings = props.get("default_generation_settings")
        n_ctx = _positive(settings.get("n_ctx")) if isinstance(settings, dict) else None
        return count, (n_ctx * count if n_ctx and count else None)


def _positive(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def load_scrape_ctx(
    pool: BackendPool,
    *,
    interval: float,
    registry: CollectorRegistry,
    after_round: Callable[[], None] | None = None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """``cleanup_ctx``: the scraper's session and task; ``after_round`` after each round
    (flow control: a backend's saturation may have ended)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=SCRAPE_CONCURRENCY, keepalive_timeout=60.0)
        session = aiohttp.ClientSession(connector=connector)
        scraper = LoadScraper(pool=pool, session=session, timeout=interval, registry=registry)

        async def scrape() -> None:
            await scraper.scrape_all()
            if after_round is not None:
                after_round()

        async with owned_task(every(interval, scrape, name="load-scrape"), name="load-scrape"):
            yield
        await session.close()

    return ctx
