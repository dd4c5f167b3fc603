"""The operator's Prometheus metrics, created on an injected ``CollectorRegistry``."""

from __future__ import annotations

import contextlib
import time
from collections import Counter as Tally
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

HANDLERS = ("create", "update", "resume", "delete", "status")
PHASES = ("Pending", "Progressing", "Ready", "Degraded", "Failed")

# Seconds: a reconcile is a few API calls, a slow one waits on a throttled API server.
RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Seconds from a scale-up from zero to the first ready pod: an image pull and a model load
# take from seconds (a cached small model) to half an hour (a large one downloaded).
COLD_START_BUCKETS = (1.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0)


class OperatorMetrics:
    """Reconciles by handler and result, their duration, InferenceServices by phase; the
    autoscaler's replicas, scale events, cold starts and routers skipped."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.reconciles = Counter(
            "llmsvc_operator_reconciles",
            "Handler runs by handler (create, update, resume, delete, status) and result "
            "(success, error; an invalid spec counts as an error).",
            ["handler", "result"],
            registry=registry,
        )
        self.duration = Histogram(
            "llmsvc_operator_reconcile_duration_seconds",
            "Seconds one handler run took, by handler.",
            ["handler"],
            buckets=RECONCILE_BUCKETS,
            registry=registry,
        )
        self.services = Gauge(
            "llmsvc_operator_inference_services",
            "InferenceServices this operator manages, by status phase.",
            ["phase"],
            registry=registry,
        )
        self.desired_replicas = Gauge(
            "llmsvc_operator_desired_replicas",
            "Replicas the builtin autoscaler wants for an autoscaled InferenceService.",
            ["namespace", "inference_service"],
            registry=registry,
        )
        self.current_replicas = Gauge(
            "llmsvc_operator_current_replicas",
            "Replicas its Deployment asks for (spec.replicas), as the autoscaler last saw them.",
            ["namespace", "inference_service"],
            registry=registry,
        )
        self.scale_events = Counter(
            "llmsvc_operator_scale_events",
            "Replica changes the builtin autoscaler made, by direction (up, down).",
            ["namespace", "inference_service", "direction"],
            registry=registry,
        )
        self.cold_start = Histogram(
            "llmsvc_operator_cold_start_seconds",
            "Seconds from a scale-up from zero to the first ready replica.",
            buckets=COLD_START_BUCKETS,
            registry=registry,
        )
        self.demand_fetch_failures = Counter(
            "llmsvc_operator_demand_fetch_failures",
            "Rounds in which a router (ip:port) did not answer GET /demand and was skipped.",
            ["router"],
            registry=registry,
        )
        for handler in HANDLERS:
            self.duration.labels(handler=handler)
            for result in ("success", "error"):
                self.reconciles.labels(handler=handler, result=result)
        self.set_phases({})

    @contextmanager
    def reconcile(self, handler: str) -> Iterator[Outcome]:
        """Time one handler run and count it; an exception, or ``outcome.failed()``, is an error."""
        outcome = Outcome()
        start = time.perf_counter()
        try:
            yield outcome
        except Exception:
            outcome.failed()
            raise
        finally:
            self.duration.labels(handler=handler).observe(time.perf_counter() - start)
            self.reconciles.labels(handler=handler, result=outcome.result).inc()

    def set_phases(self, phases: dict[tuple[str, str], str]) -> None:
        """Set the phase gauge from every known InferenceService's phase."""
        tally = Tally(phases.values())
        for phase in PHASES:
            self.services.labels(phase=phase).set(tally.get(phase, 0))

    def forget_service(self, namespace: str, name: str) -> None:
        """Drop an InferenceService's replica gauges (deleted, or no longer autoscaled); its
        scale-event counters stay (a counter does not go back)."""
        for gauge in (self.desired_replicas, self.current_replicas):
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, name)


class Outcome:
    """The result label of one handler run."""

    def __init__(self) -> None:
        self.result = "success"

    def failed(self) -> None:
        self.result = "error"
