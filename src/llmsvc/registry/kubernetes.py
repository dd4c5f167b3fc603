"""``--source kubernetes``: records from the EndpointSlices of the operator's Services.

The only module of the registry that talks to Kubernetes, through the one client
(:mod:`llmsvc.kube`): credentials in kubectl's order (:func:`load_credentials`,
re-exported here for the app), then plain asyncio over that client's ``aiohttp``
session, owned by the app's ``cleanup_ctx`` (:func:`kubernetes_ctx`).

Per watched namespace (or once for all of them) one reflector lists and
watches EndpointSlices and one Services, both labelled
``llmsvc.io/inference-service``. After every change the records are rebuilt
from all of them (:func:`llmsvc.registry.k8s_records.build_records`) and
replace the store's Kubernetes records in one step, which moves the change
index once and wakes every blocking query. A Service with no ready endpoint keeps
one ``inference-service`` record (:func:`~llmsvc.registry.k8s_records.zero_endpoint_records`),
so its model stays known to the routers, with the autoscaler's start estimate from the
Service's annotations (a Service change is a rebuild like any other). The Services'
maintenance annotations replace the book's ``kubernetes`` entries at the same time
(:func:`~llmsvc.registry.k8s_records.maintenance_entries`). Nothing is published before every
reflector has listed once, so a router never sees a half-listed cluster.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from llmsvc.core.app import CleanupCtx, owned_task
from llmsvc.core.names import INFERENCE_SERVICE_LABEL
from llmsvc.kube import (
    ENDPOINT_SLICES,
    RESTART_REASONS,
    SERVICES,
    Credentials,
    KubeClient,
    Reflector,
    WatchTiming,
)
from llmsvc.kube import CredentialsError as CredentialsError  # for the registry's cli
from llmsvc.kube import load_credentials as load_credentials  # for the registry's app
from llmsvc.registry.k8s_records import (
    SOURCE,
    EndpointSlice,
    Service,
    build_records,
    maintenance_entries,
    parse_service,
    parse_slice,
    zero_endpoint_records,
)
from llmsvc.registry.maintenance import MaintenanceBook
from llmsvc.registry.metrics import RegistryMetrics
from llmsvc.registry.models import KubernetesHealth
from llmsvc.registry.store import ServiceStore

log = logging.getLogger("llmsvc.registry.kubernetes")


class KubernetesSource:
    """Reflectors of EndpointSlices and Services whose union becomes the store's records."""

    def __init__(
        self,
        *,
        client: KubeClient,
        store: ServiceStore,
        metrics: RegistryMetrics,
        namespaces: list[str] | None,
        timing: WatchTiming,
        maintenance: MaintenanceBook | None = None,
    ) -> None:
        self._store = store
        self._maintenance = maintenance
        self._namespaces = namespaces
        self._dirty = asyncio.Event()
        self._notes: set[str] = set()
        restarts = metrics.kubernetes_watch_restarts
        for plural in (ENDPOINT_SLICES.plural, SERVICES.plural):
            for reason in RESTART_REASONS:  # every series from the start, at 0
                restarts.labels(resource=plural, reason=reason)

        def counted(plural: str) -> Callable[[str], None]:
            return lambda reason: restarts.labels(resource=plural, reason=reason).inc()

        common: dict[str, Any] = {
            "client": client,
            "label_selector": INFERENCE_SERVICE_LABEL,
            "on_change": self._dirty.set,
            "timing": timing,
            "logger": log,
        }
        scopes: list[str | None] = list(namespaces) if namespaces is not None else [None]
        self._slices = [
            Reflector[EndpointSlice](
                resource=ENDPOINT_SLICES,
                namespace=ns,
                parse=parse_slice,
                on_restart=counted(ENDPOINT_SLICES.plural),
                **common,
            )
            for ns in scopes
        ]
        self._services = [
            Reflector[Service](
                resource=SERVICES,
                namespace=ns,
                parse=parse_service,
                on_restart=counted(SERVICES.plural),
                **common,
            )
            for ns in scopes
        ]
        self._reflectors: list[Reflector[Any]] = [*self._slices, *self._services]

    @property
    def synced(self) -> bool:
        return all(r.synced for r in self._reflectors)

    def health(self) -> KubernetesHealth:
        return KubernetesHealth(
            namespaces=self._namespaces,
            synced=self.synced,
            watching=not any(r.failing for r in self._reflectors),
            records=len(self._store.records(source=SOURCE)),
        )

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for reflector in self._reflectors:
                group.create_task(reflector.run())
            group.create_task(self._publish_loop())

    async def _publish_loop(self) -> None:
        # Events that arrive together (one read of the stream) are applied before this
        # wakes up, so a burst costs one rebuild and one move of the change index.
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if not self.synced:
                continue
            try:
                self.publish()
            except Exception:  # a bug must not stop the source: log it, wait for the next change
                log.exception("kubernetes: cannot build the records")

    def publish(self) -> None:
        slices = [s for r in self._slices for s in r.objects.values()]
        services = [s for r in self._services for s in r.objects.values()]
        mapped = build_records(slices, services)
        idle = zero_endpoint_records(services, mapped.records)
        records = [*mapped.records, *idle.records]
        maintained = maintenance_entries(services, time.time())
        notes = {*mapped.notes, *idle.notes, *maintained.notes}
        for note in sorted(notes - self._notes):
            log.warning("%s", note)
        self._notes = notes
        if self._store.replace_source(SOURCE, records):
            log.info(
                "kubernetes: %d records (%d healthy, %d services without a ready endpoint)",
                len(records),
                sum(1 for r in records if r.healthy),
                len(idle.records),
            )
        if self._maintenance is not None and self._maintenance.replace_source(
            SOURCE, maintained.entries
        ):
            log.info("kubernetes: %d models in maintenance", len(maintained.entries))


def kubernetes_ctx(
    credentials: Credentials,
    *,
    namespaces: list[str] | None,
    store: ServiceStore,
    metrics: RegistryMetrics,
    on_start: Callable[[KubernetesSource], None],
    timing: WatchTiming | None = None,
    maintenance: MaintenanceBook | None = None,
) -> CleanupCtx:
    """A ``cleanup_ctx`` owning the session and the source's task.

    ``namespaces`` None watches all of them.
    """

    async def ctx(_: web.Application) -> AsyncIterator[None]:
        watch = timing or WatchTiming()
        client = KubeClient(credentials, request_timeout=watch.request_timeout)
        try:
            source = KubernetesSource(
                client=client,
                store=store,
                metrics=metrics,
                namespaces=namespaces,
                timing=watch,
                maintenance=maintenance,
            )
            on_start(source)
            async with owned_task(source.run(), name="kubernetes source"):
                yield
        finally:
            await client.close()

    return ctx
