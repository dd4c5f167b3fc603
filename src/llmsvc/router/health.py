"""Active health checks: ``GET {url}/health`` of every backend, concurrently.

:func:`check_loop` checks every backend every ``--health-interval`` seconds, and sooner
a static backend that has not passed a check yet (down when the router started) and a
backend whose last check failed (ejected, e.g. hung): after 0.5 s, then twice as long
each time up to :data:`STATIC_RETRY_MAX_S` (or the interval, if shorter), until it
passes. So an engine started after its router, or one that comes back from a hang,
takes traffic within about 2 s, not after the next full check. A failed check ejects
the backend through ``ejection.Ejector.hung`` (its waiting requests go elsewhere).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import aiohttp

from llmsvc.router.backends import Backend, BackendPool
from llmsvc.router.ejection import Ejector
from llmsvc.router.metrics import Ejection

log = logging.getLogger("llmsvc.router.health")

STATIC_RETRY_FIRST_S = 0.5  # the first re-check of a static backend that never passed
STATIC_RETRY_MAX_S = 2.0  # the re-checks' delay doubles up to this (or the interval)


async def check_backend(session: aiohttp.ClientSession, backend: Backend, timeout: float) -> bool:
    """True when the backend answers its ``/health`` with a 2xx within ``timeout``."""
    try:
        async with session.get(
            backend.url + "/health", timeout=aiohttp.ClientTimeout(total=timeout)
        ) as resp:
            await resp.read()
            return 200 <= resp.status < 300
    except (TimeoutError, aiohttp.ClientError, OSError):
        return False


async def check_all(
    session: aiohttp.ClientSession, pool: BackendPool, timeout: float, ejector: Ejector
) -> None:
    """Check every backend once (but those in standby: stopped or asleep, they would only
    fail); a failure takes it out at once, a success brings it back."""
    await check_backends(session, pool, [b for b in pool if not b.standby], timeout, ejector)


async def check_backends(
    session: aiohttp.ClientSession,
    pool: BackendPool,
    backends: Sequence[Backend],
    timeout: float,
    ejector: Ejector,
) -> None:
    """Check ``backends`` (of ``pool``) once, concurrently."""
    if not backends:
        return
    results = await asyncio.gather(*(check_backend(session, b, timeout) for b in backends))
    now = time.monotonic()
    for backend, ok in zip(backends, results, strict=True):
        if ok != backend.active_ok:
            log.log(
                logging.INFO if ok else logging.WARNING,
                "backend %s %s its health check",
                backend.name,
                "passes" if ok else "fails",
                extra={"backend": backend.name, "url": backend.url},
            )
        if not ok:
            ejector.hung(backend, Ejection.HEALTH_CHECK)
        elif backend.record_check(ok, now):
            pool.health_changed()


async def check_loop(
    session: aiohttp.ClientSession,
    pool: BackendPool,
    *,
    interval: float,
    timeout: float,
    ejector: Ejector,
    after_round: Callable[[], None],
) -> None:
    """Check every backend every ``interval`` seconds until cancelled, and sooner the
    static backends that never passed a check and the backends whose last check
    failed (the module says how); a failed round
    is logged and the loop goes on. ``after_round`` is called after each full round
    (the first makes a starting router ready)."""
    passed: set[str] = set()  # static backends that passed a check once
    retry = STATIC_RETRY_FIRST_S
    retry_max = min(interval, STATIC_RETRY_MAX_S)
    next_full = time.monotonic()
    while True:
        if time.monotonic() >= next_full:
            await _guarded(check_all(session, pool, timeout, ejector))
            next_full = time.monotonic() + interval
            after_round()
        else:
            unproven = _unproven(pool, passed)
            await _guarded(check_backends(session, pool, unproven, timeout, ejector))
        passed.update(b.name for b in pool if b.source == "static" and _passed(b))
        delay = next_full - time.monotonic()
        if _unproven(pool, passed):
            delay, retry = min(delay, retry), min(retry * 2, retry_max)
        await asyncio.sleep(max(0.0, delay))


def _passed(backend: Backend) -> bool:
    return backend.checked_at is not None and backend.active_ok


def _unproven(pool: BackendPool, passed: set[str]) -> list[Backend]:
    """Backends to check again before the next full round: static ones that never
    passed, and any whose last check failed."""
    return [
        b
        for b in pool
        if not b.standby
        and (
            (b.source == "static" and b.name not in passed)
            or (b.checked_at is not None and not b.active_ok)
        )
    ]


async def _guarded(check: Coroutine[Any, Any, None]) -> None:
    try:
        await check
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("health checks failed; retrying at the next round")
