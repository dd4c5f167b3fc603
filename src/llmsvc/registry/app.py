"""``create_app``: the registry's state, routes and background work in one application."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator
from functools import partial

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from llmsvc import __version__
from llmsvc.core.app import CleanupCtx, background, every, make_app
from llmsvc.registry.api import ROUTES, registry_auth
from llmsvc.registry.health import CONCURRENT_CHECKS, check_all
from llmsvc.registry.kubernetes import KubernetesSource, kubernetes_ctx, load_credentials
from llmsvc.registry.leases import LeaseBook
from llmsvc.registry.limits import RegistrationLimiter
from llmsvc.registry.maintenance import MaintenanceBook
from llmsvc.registry.metrics import RegistryMetrics
from llmsvc.registry.models import KubernetesHealth
from llmsvc.registry.persistence import StateFileError, StateWriter, load_or_recover
from llmsvc.registry.settings import RegistrySettings
from llmsvc.registry.state import REGISTRY, RegistryState
from llmsvc.registry.store import ServiceStore

log = logging.getLogger("llmsvc.registry")

MAX_BODY = 1024 * 1024
"""Bytes: the largest registration body accepted (413 above)."""


# -- background work -------------------------------------------------------------


async def _session_ctx(app: web.Application) -> AsyncIterator[None]:
    state = app[REGISTRY]
    connector = aiohttp.TCPConnector(limit=CONCURRENT_CHECKS)
    async with aiohttp.ClientSession(connector=connector) as session:
        state.session = session
        try:
            yield
        finally:
            state.session = None


async def _health_loop(app: web.Application) -> None:
    state = app[REGISTRY]
    settings = state.settings
    check = partial(
        check_all,
        store=state.store,
        session=state.checks_session(),
        metrics=state.metrics,
        timeout=settings.health_timeout,
    )
    interval = settings.health_interval
    await every(interval, check, name="health checks", first_delay=interval)


async def _cleanup_loop(app: web.Application) -> None:
    state = app[REGISTRY]
    store, metrics = state.store, state.metrics

    async def sweep() -> None:
        state.maintenance.expire()  # an entry past its end moves the index now, read or not
        for record in store.sweep():
            state.leases.drop(record.name)
            metrics.removed.labels(reason="ttl_expired").inc()
            log.warning(
                "removed %s: no heartbeat for over 2x the TTL",
                record.name,
                extra={"last_heartbeat": record.last_heartbeat},
            )

    interval = state.settings.cleanup_interval
    await every(interval, sweep, name="cleanup", first_delay=interval)


def _flush_at_exit(writer: StateWriter) -> CleanupCtx:
    """Writes the last changes after the writer task has stopped (cleanup runs in reverse)."""

    async def ctx(_: web.Application) -> AsyncIterator[None]:
        yield
        try:
            writer.flush()
        except StateFileError as exc:
            log.error("%s; the last changes are not saved", exc)

    return ctx


async def _release_watchers(app: web.Application) -> None:
    app[REGISTRY].store.close()


# -- the app ---------------------------------------------------------------------


def _add_kubernetes_source(app: web.Application) -> None:
    state = app[REGISTRY]
    settings = state.settings
    credentials = load_credentials()
    # Neither --namespace nor --all-namespaces: the namespace kubectl would use.
    namespaces = None if settings.all_namespaces else settings.namespace or [credentials.namespace]

    running: list[KubernetesSource] = []  # filled at startup, when the session exists

    def health() -> KubernetesHealth:
        if running:
            return running[0].health()
        return KubernetesHealth(namespaces=namespaces, synced=False, watching=False, records=0)

    state.kubernetes = health
    log.info(
        "kubernetes source: %s at %s",
        "all namespaces" if namespaces is None else "namespaces " + ",".join(namespaces),
        credentials.server,
    )
    app.cleanup_ctx.append(
        kubernetes_ctx(
            credentials,
            namespaces=namespaces,
            store=state.store,
            metrics=state.metrics,
            on_start=running.append,
            maintenance=state.maintenance,
        )
    )


def create_app(
    settings: RegistrySettings, *, registry: CollectorRegistry | None = None
) -> web.Application:
    """The registry app.

    Raises ``StateFileError`` when the state file is unusable and ``KubeConfigError``
    when ``--source kubernetes`` finds no usable credentials.
    """
    # The index starts at the start time in milliseconds: a watcher's index from an
    # earlier run of the registry then never equals one of this run.
    store = ServiceStore(ttl=settings.heartbeat_ttl, index=int(time.time() * 1000))
    maintenance = MaintenanceBook(on_change=store.touch)
    leases = LeaseBook()
    writer = None
    if settings.state_file is not None:
        saved = load_or_recover(settings.state_file)
        if saved is not None:
            store.restore(saved.services, index=saved.index)
            leases = LeaseBook(saved.leases)
            maintenance.restore(saved.maintenance)
            log.info(
                "restored %d services and %d maintenance entries from %s",
                len(store),
                len(maintenance),
                settings.state_file,
            )
        writer = StateWriter(store, settings.state_file, leases=leases, maintenance=maintenance)
        writer.save_now()  # fail now, not at the first change, if it cannot be written
    prometheus = registry if registry is not None else CollectorRegistry()
    app = make_app(
        title="llmsvc registry",
        version=__version__,
        routes=ROUTES,
        client_max_size=MAX_BODY,
        read_timeout=settings.read_timeout,
        auth=registry_auth(settings),
    )
    app[REGISTRY] = RegistryState(
        settings=settings,
        store=store,
        maintenance=maintenance,
        metrics=RegistryMetrics(prometheus),
        prometheus=prometheus,
        leases=leases,
        registrations=RegistrationLimiter(
            rate=settings.max_registrations_per_second,
            burst=math.ceil(2 * settings.max_registrations_per_second),
        ),
    )
    app.cleanup_ctx.append(_session_ctx)
    app.cleanup_ctx.append(background("health checks", _health_loop))
    app.cleanup_ctx.append(background("cleanup", _cleanup_loop))
    if settings.source == "kubernetes":
        _add_kubernetes_source(app)
    if writer is not None:
        app.cleanup_ctx.append(_flush_at_exit(writer))
        app.cleanup_ctx.append(background("state file", lambda _: writer.run()))
    app.on_shutdown.append(_release_watchers)
    return app
