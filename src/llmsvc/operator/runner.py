"""Run kopf and the operator's HTTP endpoint in one asyncio loop.

:func:`kopf_settings` maps our settings onto kopf's: standalone (no peering),
finalizer ``llmsvc.io/finalizer``, progress and diff-base kept in annotations
under ``llmsvc.io/``, Events posted as component ``llmsvc-operator``, watch and
batching timings. :func:`run` is given the port already bound (a busy port ends
the process before it touches the cluster), logs in and checks the CRD, serves
``/health`` and ``/metrics`` (``core.serving.serving``: drained on the way out),
and runs ``kopf.operator`` until SIGTERM/SIGINT (kopf handles the signals).
The autoscaler (:func:`make_autoscaler`, ``--autoscaler``) starts with kopf's
startup handlers and stops before the API client closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from typing import Any

import kopf
from prometheus_client import CollectorRegistry

from llmsvc.core.names import ANNOTATIONS_PREFIX, FINALIZER, INFERENCE_SERVICE_LABEL
from llmsvc.core.serving import serving
from llmsvc.kube import Credentials, KubeClient, KubeError
from llmsvc.operator.app import create_app
from llmsvc.operator.autoscaler import Autoscaler
from llmsvc.operator.builders import BuildDefaults, TokenSecret
from llmsvc.operator.demand_source import DemandSource
from llmsvc.operator.handlers import CHILD_RESOURCES, register
from llmsvc.operator.metrics import OperatorMetrics
from llmsvc.operator.reconcile import Reconciler
from llmsvc.operator.settings import OperatorSettings
from llmsvc.operator.spec import GROUP, PLURAL, VERSION

log = logging.getLogger("llmsvc.operator")

COMPONENT = "llmsvc-operator"


def kopf_settings(settings: OperatorSettings) -> kopf.OperatorSettings:
    """kopf's settings for our operator."""
    ks = kopf.OperatorSettings()
    ks.peering.standalone = True
    ks.persistence.finalizer = FINALIZER
    ks.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATIONS_PREFIX)
    ks.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATIONS_PREFIX, key="last-handled-configuration"
    )
    ks.posting.level = logging.INFO  # kopf.info/warn calls become Events, logs do not
    ks.posting.reporting_component = COMPONENT
    ks.posting.reporting_instance = reporting_instance()
    ks.posting.event_name_prefix = "llmsvc-"
    ks.watching.server_timeout = settings.watch_timeout
    ks.watching.client_timeout = settings.watch_timeout + 10
    ks.watching.connect_timeout = settings.request_timeout
    ks.batching.batch_window = settings.batch_window
    ks.networking.request_timeout = settings.request_timeout
    # Only the children of InferenceServices travel from the API server.
    for group, version, plural in CHILD_RESOURCES:
        ks.watching.label_selectors[group or version, plural] = INFERENCE_SERVICE_LABEL
    # No watching of namespaces and CRDs (less RBAC): specific namespaces are assumed to
    # exist, and the CRD is checked once at the start (check_api).
    ks.scanning.disabled = True
    return ks


def reporting_instance() -> str:
    """Who posts the operator's Events: the pod, else the host."""
    return os.environ.get("POD_NAME") or socket.gethostname()


def build_defaults(settings: OperatorSettings) -> BuildDefaults:
    """What every InferenceService's objects get from the operator's flags."""
    token = None
    if settings.registry_token_secret:
        token = TokenSecret(
            name=settings.registry_token_secret,
            key=settings.registry_token_secret_key,
            namespaces=frozenset(settings.registry_token_secret_namespaces),
        )
    return BuildDefaults(
        image_prefix=settings.image_prefix, image_tag=settings.image_tag, registry_token=token
    )


def watched(settings: OperatorSettings, fallback: str) -> list[str]:
    """The namespaces to manage: the flags', or the credentials' own."""
    if settings.all_namespaces:
        return []
    return list(settings.namespace) or [fallback]


async def run(
    settings: OperatorSettings,
    *,
    sockets: list[socket.socket],
    namespaces: list[str],
    credentials: Credentials,
) -> None:
    """Serve the endpoint on ``sockets`` and run the operator until a signal stops it.

    ``credentials`` serve both the operator's own client and kopf (its login handler).
    """
    prometheus = CollectorRegistry()
    metrics = OperatorMetrics(prometheus)
    api = KubeClient(credentials, request_timeout=settings.request_timeout)
    reconciler = Reconciler(
        api=api,
        defaults=build_defaults(settings),
        metrics=metrics,
        debounce=settings.status_debounce,
        resync=settings.resync_interval,
    )
    registry = kopf.OperatorRegistry()
    register(registry, reconciler)
    autoscaler = make_autoscaler(settings, api=api, metrics=metrics, namespaces=namespaces)
    if autoscaler is not None:

        @kopf.on.startup(id="autoscaler", registry=registry)
        async def start_autoscaler(**_: Any) -> None:
            autoscaler.start()

        @kopf.on.cleanup(id="autoscaler-stop", registry=registry)
        async def stop_autoscaler(**_: Any) -> None:
            await autoscaler.close()  # no decision after SIGTERM, while the endpoint drains

    ready = asyncio.Event()
    app = create_app(
        reconciler=reconciler,
        ready=ready,
        prometheus=prometheus,
        watching=namespaces or ["*"],
    )
    try:
        await check_api(api)
        async with serving(
            app, name="operator", sockets=sockets, shutdown_timeout=settings.shutdown_timeout
        ):
            log.info(
                "operator watching %s; health and metrics on port %d",
                ", ".join(namespaces) or "all namespaces",
                settings.port,
            )
            try:
                await kopf.operator(
                    registry=registry,
                    settings=kopf_settings(settings),
                    standalone=True,
                    clusterwide=settings.all_namespaces,
                    namespaces=namespaces,
                    ready_flag=ready,
                )
            finally:
                _ignore_further_signals()  # before the endpoint drains and stops
    finally:
        if autoscaler is not None:
            await autoscaler.close()
        await reconciler.close()
        await api.close()


def make_autoscaler(
    settings: OperatorSettings, *, api: KubeClient, metrics: OperatorMetrics, namespaces: list[str]
) -> Autoscaler | None:
    """The autoscaler ``--autoscaler`` asks for (``None``: ``none``), with its demand source."""
    if settings.autoscaler == "none":
        return None
    source = None
    if settings.autoscaler == "builtin":
        if settings.router_service is None:
            log.warning(
                "--autoscaler builtin without --router-service: no demand is known, "
                "autoscaled InferenceServices stay at minReplicas"
            )
        else:
            token = settings.router_admin_token
            source = DemandSource(
                api=api,
                service=settings.router_service,
                port_name=settings.router_port_name,
                token=token.get_secret_value() if token is not None else None,
                timeout=settings.router_timeout,
                metrics=metrics,
            )
    return Autoscaler(
        api=api,
        metrics=metrics,
        mode=settings.autoscaler,
        interval=settings.autoscale_interval,
        namespaces=namespaces,
        source=source,
        prometheus_url=settings.keda_prometheus_url,
        reporter=(COMPONENT, reporting_instance()),
    )


class StartupError(Exception):
    """The operator cannot start; the message is one line for the terminal or pod status."""


async def check_api(api: KubeClient) -> None:
    """Fail at once, and say why, when the API is unreachable or the CRD is not installed."""
    try:
        found = await api.get(f"/apis/{GROUP}/{VERSION}")
    except KubeError as exc:
        raise StartupError(f"cannot reach the Kubernetes API: {exc}") from None
    plurals = {r.get("name") for r in (found or {}).get("resources", [])}
    if PLURAL not in plurals:
        raise StartupError(
            f"the InferenceService CRD ({PLURAL}.{GROUP}/{VERSION}) is not installed: "
            "apply it first ('llmsvc operator crd | kubectl apply -f -')"
        )


def _ignore_further_signals() -> None:
    """kopf's signal handlers outlive it; a second SIGTERM while we clean up is only logged."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, log.info, "already stopping (%s)", sig.name)
