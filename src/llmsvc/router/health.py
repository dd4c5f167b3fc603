"""Active health checks: ``GET {url}/health`` of every backend, concurrently."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp

from llmsvc.router.backends import Backend, BackendPool

log = logging.getLogger("llmsvc.router.health")


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


async def check_all(session: aiohttp.ClientSession, pool: BackendPool, timeout: float) -> None:
    """Check every backend once; a failure takes it out at once, a success brings it back."""
    backends = list(pool)
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
        if backend.record_check(ok, now):
            pool.health_changed()
