"""``--source kubernetes``: records from the EndpointSlices of the operator's Services.

The only module of the registry that imports the ``kubernetes`` package, and
only to load credentials once at startup (:func:`load_connection`: kubeconfig
or in-cluster, as kubectl and controller-runtime find them) into a
``kubernetes.client.Configuration``. Everything after that is plain asyncio
over one ``aiohttp`` session (:mod:`llmsvc.registry.k8s_watch`), owned by the
app's ``cleanup_ctx`` (:func:`kubernetes_ctx`).

Per watched namespace (or once for all of them) one reflector lists and
watches EndpointSlices and one Services, both labelled
``llmsvc.io/inference-service``. After every change the records are rebuilt
from all of them (:func:`llmsvc.registry.k8s_records.build_records`) and
replace the store's Kubernetes records in one step, which moves the change
index once and wakes every blocking query. Nothing is published before every
reflector has listed once, so a router never sees a half-listed cluster.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from llmsvc.core.app import CleanupCtx, owned_task
from llmsvc.registry.k8s_records import (
    SOURCE,
    EndpointSlice,
    Service,
    build_records,
    parse_service,
    parse_slice,
)
from llmsvc.registry.k8s_watch import (
    ENDPOINT_SLICES,
    SERVICES,
    Connection,
    KubeClient,
    Reflector,
    WatchTiming,
)
from llmsvc.registry.metrics import RegistryMetrics
from llmsvc.registry.models import KubernetesHealth
from llmsvc.registry.store import ServiceStore

log = logging.getLogger("llmsvc.registry.kubernetes")

_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class KubeConfigError(Exception):
    """No usable Kubernetes credentials; the message is one line."""


@dataclass(frozen=True)
class Credentials:
    connection: Connection
    namespace: str
    """The namespace of the kubeconfig's current context, or the pod's own in-cluster."""


def load_connection() -> Credentials:
    """Load credentials once, the way controller-runtime does.

    ``KUBECONFIG`` when set; else in-cluster (``KUBERNETES_SERVICE_HOST`` and the
    service account's token); else ``~/.kube/config``. Raises :class:`KubeConfigError`.
    """
    try:
        from kubernetes import config as kube_config
        from kubernetes.client import Configuration
    except ImportError:  # pragma: no cover - a dependency of the images that need it
        raise KubeConfigError(
            "--source kubernetes needs the 'kubernetes' package (pip install kubernetes)"
        ) from None
    cfg = Configuration()
    env = os.environ.get("KUBECONFIG", "")
    default = Path("~/.kube/config").expanduser()
    try:
        if env or not os.environ.get("KUBERNETES_SERVICE_HOST"):
            path = env or str(default)
            if not env and not default.exists():
                raise KubeConfigError(
                    "no Kubernetes credentials: set KUBECONFIG, create ~/.kube/config, "
                    "or run in a pod with a service account"
                )
            kube_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=path, client_configuration=cfg
            )
            _, context = kube_config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
                config_file=path
            )
            namespace = str((context.get("context") or {}).get("namespace") or "default")
        else:
            kube_config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=cfg
            )
            namespace = _pod_namespace()
    except KubeConfigError:
        raise
    except Exception as exc:  # the loaders raise many kinds; all end the same way here
        raise KubeConfigError(f"cannot load Kubernetes credentials: {exc}") from None
    return Credentials(connection=_connection(cfg), namespace=namespace)


def _pod_namespace() -> str:
    try:
        return _SA_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


def _connection(cfg: Any) -> Connection:
    """A :class:`Connection` from a loaded ``kubernetes.client.Configuration``."""
    host = str(cfg.host).rstrip("/")
    context = None
    if host.startswith("https://"):
        context = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
        if cfg.cert_file:
            context.load_cert_chain(cfg.cert_file, cfg.key_file or None)
        if not cfg.verify_ssl:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE

    def authorization() -> str | None:
        # Runs the library's refresh hook: re-reads a rotated service-account token
        # (in-cluster, at most once a minute) or an expired exec plugin's token.
        value = cfg.get_api_key_with_prefix("BearerToken", alias="authorization")
        return str(value) if value else None

    return Connection(
        host=host,
        ssl=context,
        server_hostname=cfg.tls_server_name or None,
        proxy=cfg.proxy or None,
        authorization=authorization,
    )


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
    ) -> None:
        self._store = store
        self._namespaces = namespaces
        self._dirty = asyncio.Event()
        self._notes: set[str] = set()
        common: dict[str, Any] = {
            "client": client,
            "on_change": self._dirty.set,
            "restarts": metrics.kubernetes_watch_restarts,
            "timing": timing,
        }
        scopes: list[str | None] = list(namespaces) if namespaces is not None else [None]
        self._slices = [
            Reflector[EndpointSlice](
                resource=ENDPOINT_SLICES, namespace=ns, parse=parse_slice, **common
            )
            for ns in scopes
        ]
        self._services = [
            Reflector[Service](resource=SERVICES, namespace=ns, parse=parse_service, **common)
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
        for note in sorted(set(mapped.notes) - self._notes):
            log.warning("%s", note)
        self._notes = set(mapped.notes)
        if self._store.replace_source(SOURCE, mapped.records):
            log.info(
                "kubernetes: %d records (%d healthy)",
                len(mapped.records),
                sum(1 for r in mapped.records if r.healthy),
            )


def kubernetes_ctx(
    credentials: Credentials,
    *,
    namespaces: list[str] | None,
    store: ServiceStore,
    metrics: RegistryMetrics,
    on_start: Callable[[KubernetesSource], None],
    timing: WatchTiming | None = None,
) -> CleanupCtx:
    """A ``cleanup_ctx`` owning the session and the source's task.

    ``namespaces`` None watches all of them.
    """

    async def ctx(_: web.Application) -> AsyncIterator[None]:
        # No total timeout on the session: each request sets its own.
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            source = KubernetesSource(
                client=KubeClient(session, credentials.connection, timing or WatchTiming()),
                store=store,
                metrics=metrics,
                namespaces=namespaces,
                timing=timing or WatchTiming(),
            )
            on_start(source)
            async with owned_task(source.run(), name="kubernetes source"):
                yield

    return ctx
