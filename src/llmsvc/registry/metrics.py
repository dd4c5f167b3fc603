"""The registry's Prometheus metrics, created on an injected ``CollectorRegistry``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from llmsvc.core.records import BABYSITTER, OPENAI_API
from llmsvc.registry.k8s_records import SOURCE as KUBERNETES
from llmsvc.registry.maintenance import MaintenanceBook
from llmsvc.registry.store import ServiceStore

# Record types are free strings; the metric label keeps them bounded.
_KNOWN_TYPES = (OPENAI_API, BABYSITTER)


def type_label(type_: str) -> str:
    return type_ if type_ in _KNOWN_TYPES else "other"


class RegistryMetrics:
    """Counters updated as things happen; gauges refreshed from the store at scrape time."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.services = Gauge(
            "llmsvc_registry_services",
            "Registered services by type and status.",
            ["type", "status"],
            registry=registry,
        )
        self.registrations = Counter(
            "llmsvc_registry_registrations",
            "Registrations accepted (new names and replacements).",
            registry=registry,
        )
        self.deregistrations = Counter(
            "llmsvc_registry_deregistrations",
            "Services deregistered over HTTP.",
            registry=registry,
        )
        self.heartbeats = Counter(
            "llmsvc_registry_heartbeats",
            "Heartbeats received for known services.",
            registry=registry,
        )
        self.removed = Counter(
            "llmsvc_registry_removed",
            "Services removed by the registry itself, by reason.",
            ["reason"],
            registry=registry,
        )
        self.health_checks = Counter(
            "llmsvc_registry_health_checks",
            "Health checks run, by result (success, failure).",
            ["result"],
            registry=registry,
        )
        self.change_index = Gauge(
            "llmsvc_registry_change_index",
            "The registry's change index (what blocking queries wait on).",
            registry=registry,
        )
        self.blocking_queries = Gauge(
            "llmsvc_registry_blocking_queries",
            "Blocking queries (GET /services?index=N) waiting for the next change: "
            "about one per router and watcher.",
            registry=registry,
        )
        self.kubernetes_records = Gauge(
            "llmsvc_registry_kubernetes_records",
            "Records that come from Kubernetes (--source kubernetes): one per endpoint, and one "
            "per operator Service with no ready endpoint (its model stays known).",
            registry=registry,
        )
        self.kubernetes_watch_restarts = Counter(
            "llmsvc_registry_kubernetes_watch_restarts",
            "Kubernetes watches started again, by resource (endpointslices, services) and "
            "reason (closed: the server ended the stream, as it does at the watch's timeout; "
            "error: a request or stream failed; expired: 410 Gone, so it was listed again).",
            ["resource", "reason"],
            registry=registry,
        )
        self.maintenance_entries = Gauge(
            "llmsvc_registry_maintenance_entries",
            "Maintenance entries in force, by source (http: PUT /maintenance; kubernetes: "
            "the InferenceService annotations).",
            ["source"],
            registry=registry,
        )
        for result in ("success", "failure"):
            self.health_checks.labels(result=result)
        self.removed.labels(reason="ttl_expired")

    def refresh(self, store: ServiceStore, maintenance: MaintenanceBook | None = None) -> None:
        """Set the gauges from the store and the maintenance book (before each scrape)."""
        counts: dict[tuple[str, str], int] = {
            (t, s): 0 for t in (*_KNOWN_TYPES, "other") for s in ("healthy", "unhealthy", "standby")
        }
        for record in store.records():
            key = (type_label(record.type), record.status)
            counts[key] += 1
        for (type_, status), n in counts.items():
            self.services.labels(type=type_, status=status).set(n)
        self.change_index.set(store.index)
        self.kubernetes_records.set(len(store.records(source=KUBERNETES)))
        if maintenance is not None:
            entries = maintenance.entries()
            for source in ("http", "kubernetes"):
                self.maintenance_entries.labels(source=source).set(
                    sum(1 for e in entries if e.source == source)
                )
