"""Health checks: ``GET {url}{metadata.health_path or "/health"}``; success is a 2xx."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import aiohttp

from llmsvc.core.records import ServiceRecord
from llmsvc.registry.metrics import RegistryMetrics
from llmsvc.registry.store import HTTP, ServiceStore

log = logging.getLogger("llmsvc.registry.health")

DEFAULT_HEALTH_PATH = "/health"
# Checks in flight at once; the client session's connection pool has the same size.
CONCURRENT_CHECKS = 100


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check of one record."""

    url: str
    ok: bool
    http_status: int | None
    error: str | None
    latency_s: float


def health_url(record: ServiceRecord) -> str:
    path = record.metadata.get("health_path")
    if not isinstance(path, str) or not path:
        path = DEFAULT_HEALTH_PATH
    if not path.startswith("/"):
        path = "/" + path
    return f"{record.origin()}{path}"


async def probe(session: aiohttp.ClientSession, url: str, timeout: float) -> CheckResult:
    """One GET of ``url``; never raises (but for cancellation)."""
    started = time.monotonic()
    status: int | None = None
    error: str | None = None
    try:
        async with session.get(
            url, timeout=aiohttp.ClientTimeout(total=timeout), allow_redirects=False
        ) as resp:
            status = resp.status
            await resp.read()
    except TimeoutError:
        error = f"timed out after {timeout:g}s"
    except (aiohttp.ClientError, OSError) as exc:
        error = str(exc) or type(exc).__name__
    ok = status is not None and 200 <= status < 300
    if status is not None and not ok:
        error = f"HTTP {status}"
    return CheckResult(url, ok, status, error, time.monotonic() - started)


async def check_record(
    record: ServiceRecord,
    *,
    store: ServiceStore,
    session: aiohttp.ClientSession,
    metrics: RegistryMetrics,
    timeout: float,
) -> CheckResult:
    """Check ``record`` now and apply the result to the store."""
    started = store.now()
    result = await probe(session, health_url(record), timeout)
    metrics.health_checks.labels(result="success" if result.ok else "failure").inc()
    updated = store.record_check(record.name, result.ok, url=record.url, started=started)
    if updated is not None and updated.status != record.status:
        log.info(
            "service %s is now %s",
            record.name,
            updated.status,
            extra={"url": result.url, "error": result.error},
        )
    return result


async def check_all(
    *,
    store: ServiceStore,
    session: aiohttp.ClientSession,
    metrics: RegistryMetrics,
    timeout: float,
) -> None:
    """Check every HTTP-registered record, at most ``CONCURRENT_CHECKS`` at a time.

    Records of another source are left alone: Kubernetes records take their
    status from the endpoint's ``ready`` condition (the pod's readiness probe).
    So are ``standby`` records: their engine is stopped or asleep on purpose, and
    their babysitter's heartbeats say when it is back.

    The timeout covers one check from the moment it has a connection, so that a
    large registry does not mark healthy services down for waiting in line.
    """
    records = [r for r in store.records(source=HTTP) if r.status != "standby"]
    gate = asyncio.Semaphore(CONCURRENT_CHECKS)

    async def one(record: ServiceRecord) -> None:
        async with gate:
            await check_record(
                record, store=store, session=session, metrics=metrics, timeout=timeout
            )

    if records:
        await asyncio.gather(*(one(r) for r in records))
