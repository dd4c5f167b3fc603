"""The registry's app state: one typed object under one ``web.AppKey`` (:data:`REGISTRY`).

Handlers read ``request.app[REGISTRY]``; ``create_app`` builds it, and the
``cleanup_ctx`` that owns the health checks' client session sets and clears
:attr:`RegistryState.session`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from llmsvc.core.errors import ServiceUnavailable
from llmsvc.registry.leases import LeaseBook
from llmsvc.registry.limits import RegistrationLimiter
from llmsvc.registry.maintenance import MaintenanceBook
from llmsvc.registry.metrics import RegistryMetrics
from llmsvc.registry.models import KubernetesHealth
from llmsvc.registry.settings import RegistrySettings
from llmsvc.registry.store import ServiceStore

AnswerKey = tuple[bool | None, str | None, str | None]
"""A blocking query's filters: healthy, type, model."""


@dataclass
class Answers:
    """Blocking-query answers of the current change index, by filter."""

    index: int = -1
    bodies: dict[AnswerKey, bytes] = field(default_factory=dict)


@dataclass(eq=False, kw_only=True)
class RegistryState:
    """Everything the registry's handlers and background work share."""

    settings: RegistrySettings
    store: ServiceStore
    maintenance: MaintenanceBook
    """The maintenance entries; their changes move ``store``'s change index."""
    metrics: RegistryMetrics
    prometheus: CollectorRegistry
    """What ``/metrics`` renders (``metrics`` lives in it)."""
    started: float = field(default_factory=time.monotonic)
    """``time.monotonic()`` when the app was built: the start of ``uptime_s``."""
    leases: LeaseBook = field(default_factory=LeaseBook)
    """Who holds each name (the state file keeps it too)."""
    answers: Answers = field(default_factory=Answers)
    registrations: RegistrationLimiter = field(
        default_factory=lambda: RegistrationLimiter(rate=0, burst=1)
    )
    """The per-client registration rate (``--max-registrations-per-second``)."""
    kubernetes: Callable[[], KubernetesHealth] | None = None
    """The Kubernetes source's health with ``--source kubernetes``; None otherwise."""
    session: aiohttp.ClientSession | None = None
    """The health checks' client session; exists while the app runs."""

    def uptime(self) -> float:
        """Seconds since the app was built, to the millisecond."""
        return round(time.monotonic() - self.started, 3)

    def checks_session(self) -> aiohttp.ClientSession:
        """The health checks' session; a 503 while the app is starting or stopping."""
        if self.session is None:
            raise ServiceUnavailable("The registry is starting or stopping")
        return self.session


REGISTRY = web.AppKey("registry", RegistryState)
