"""The router's Prometheus metrics, on an injected ``CollectorRegistry``.

Per-request series are counters and histograms whose labelled children are
cached, so the hot path does no label lookups after the first request of a
(model, backend, status). Gauges that describe backends (in flight, healthy)
are set from the pool when ``/metrics`` is scraped (with ``--workers``, also
every second by each worker), not on every request. The label values the
router itself defines are here: :data:`UNKNOWN_MODEL`, :data:`NO_BACKEND`, the
kinds of :class:`Failure`, the reasons of :class:`Ejection` and of :class:`Rejection`.

Flow control adds gauges of what waits (queued per class, held) and of each model's
demand (in flight + queued + held, what an autoscaler reads), set from the router's
:class:`ModelDemand` at scrape time like the backend gauges; the queue-wait histogram,
the rejections, the wakes of standby engines and the per-tenant counters are counted on
the request path. Labels stay bounded: ``model_name`` only takes known models (else
:data:`UNKNOWN_MODEL`), ``tenant`` the names in the API keys file (or ``anonymous``),
``priority`` the four classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from llmsvc.core.metrics import LATENCY_BUCKETS
from llmsvc.router.backends import BackendPool
from llmsvc.router.demand import ModelDemand
from llmsvc.router.priority import LABELS as PRIORITY_LABELS

UNKNOWN_MODEL = "_unknown"  # model_name label of requests for a model no backend lists
NO_BACKEND = "_none"  # backend label of requests no backend took


class Failure(StrEnum):
    """How a backend failed a request: the ``kind`` label of the upstream-errors counter."""

    CONNECT = "connect"  # no connection, or it broke before the headers
    TIMEOUT = "timeout"  # no headers or first chunk in time, or the proxy timeout mid-stream
    STATUS_5XX = "status_5xx"  # it answered a 5xx
    BODY = "body"  # the body of a plain answer broke off
    STREAM = "stream"  # a stream broke off
    STREAM_IDLE = "stream_idle"  # a stream sent nothing for --stream-idle-timeout
    EJECTED = "ejected"  # it was ejected (hung) while the request waited for its first byte


class Ejection(StrEnum):
    """Why a backend was taken out: the ``reason`` label of the ejections counter."""

    SUSPECT_PROBE = "suspect_probe"  # a request waited, and its /health did not answer
    HEALTH_CHECK = "health_check"  # its periodic active check failed
    CONSECUTIVE_FAILURES = "consecutive_failures"  # outlier: failures in a row
    LATENCY = "latency"  # outlier: first bytes far slower than its peers'


class Rejection(StrEnum):
    """Why flow control turned a request away: the ``reason`` label of the rejections counter."""

    QUEUE_FULL = "queue_full"  # the model's queue was full, or a higher class evicted it
    QUEUE_TIMEOUT = "queue_timeout"  # waited for a slot longer than --queue-timeout
    NO_HEALTHY_BACKEND = "no_healthy_backend"  # held past --hold-timeout (or no hold)
    RATE_LIMIT_EXCEEDED = "rate_limit_exceeded"  # over its tenant's rpm or tpm
    MODEL_NOT_ALLOWED = "model_not_allowed"  # its API key may not use the model
    MAINTENANCE = "maintenance"  # the model (or every eligible backend) is in maintenance
    DRAINING = "draining"  # the router was stopping (SIGTERM) before it could be served


SHED = (Rejection.QUEUE_FULL, Rejection.QUEUE_TIMEOUT, Rejection.NO_HEALTHY_BACKEND)
"""The reasons that mean the fleet had no room: what the shedding alert watches."""

QUEUE_WAIT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
"""Seconds in the queue: a slot freed at once (ms) up to past the default --queue-timeout."""


class TokenKind(StrEnum):
    """The ``kind`` label of the per-tenant tokens counter."""

    PROMPT = "prompt"
    COMPLETION = "completion"


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "llmsvc_router_requests_total",
            "Requests answered, by model, backend and HTTP status.",
            ["model_name", "backend", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "llmsvc_router_request_duration_seconds",
            "Time from reading the request to its last byte sent.",
            ["model_name"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.ttfb = Histogram(
            "llmsvc_router_time_to_first_byte_seconds",
            "Time from the request to the first upstream byte (headers, or first chunk "
            "of a stream).",
            ["model_name"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "llmsvc_router_in_flight",
            "Requests in flight to each backend.",
            ["backend"],
            registry=registry,
            multiprocess_mode="livesum",  # --workers: the sum over the live workers
        )
        self.retries = Counter(
            "llmsvc_router_retries_total",
            "Requests sent again to another backend.",
            ["model_name"],
            registry=registry,
        )
        self.upstream_errors = Counter(
            "llmsvc_router_upstream_errors_total",
            f"Failures talking to a backend, by kind ({', '.join(Failure)}).",
            ["backend", "kind"],
            registry=registry,
        )
        self.ejections = Counter(
            "llmsvc_router_ejections_total",
            f"Backends taken out, by reason ({', '.join(Ejection)}).",
            ["backend", "reason"],
            registry=registry,
        )
        self.suspect_probes = Counter(
            "llmsvc_router_suspect_probes_total",
            "Health probes of a backend a request waited on (--suspect-after), by result.",
            ["backend", "result"],
            registry=registry,
        )
        self.backend_healthy = Gauge(
            "llmsvc_router_backend_healthy",
            "1 when the backend is eligible for routing, else 0.",
            ["backend"],
            registry=registry,
            multiprocess_mode="livemin",  # --workers: 1 only when every worker routes to it
        )
        self.backend_passive_down = Gauge(
            "llmsvc_router_backend_passive_down",
            "1 while passive health (max_fails within fail_timeout) keeps the backend out.",
            ["backend"],
            registry=registry,
            multiprocess_mode="livemax",  # --workers: 1 when any worker keeps it out
        )
        self.model_healthy_backends = Gauge(
            "llmsvc_router_model_healthy_backends",
            "Backends eligible for routing per model listed by any backend (0: none is); "
            "one whose backends are all in standby has no series.",
            ["model_name"],
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.registry_up = Gauge(
            "llmsvc_router_registry_up",
            "1 when the last registry query succeeded, else 0 (also 0 without a registry).",
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.queue_requests = Gauge(
            "llmsvc_router_queue_requests",
            "Requests waiting in the router's queue for a slot, by model and priority class.",
            ["model_name", "priority"],
            registry=registry,
            multiprocess_mode="livesum",  # --workers: each worker has its own queue
        )
        self.held_requests = Gauge(
            "llmsvc_router_held_requests",
            "Requests held for a known model with no ready backend (cold start, standby).",
            ["model_name"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.model_demand = Gauge(
            "llmsvc_router_model_demand",
            "Requests accepted for the model and not yet answered: in flight + queued + "
            "held (what an autoscaler reads; 0 for a known model without traffic).",
            ["model_name"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.queue_wait = Histogram(
            "llmsvc_router_queue_wait_seconds",
            "Time a request waited in the router's queue for a slot, by model and priority "
            "class (those that waited, whether they were then served or not).",
            ["model_name", "priority"],
            buckets=QUEUE_WAIT_BUCKETS,
            registry=registry,
        )
        self.rejected = Counter(
            "llmsvc_router_rejected_requests_total",
            f"Requests flow control turned away, by reason ({', '.join(Rejection)}).",
            ["model_name", "priority", "reason"],
            registry=registry,
        )
        self.tenant_requests = Counter(
            "llmsvc_router_tenant_requests_total",
            "Requests per tenant (API key name; anonymous without keys) and priority class.",
            ["tenant", "priority"],
            registry=registry,
        )
        self.tenant_tokens = Counter(
            "llmsvc_router_tenant_tokens_total",
            "Tokens per tenant from the answers' usage, by kind (prompt, completion).",
            ["tenant", "kind"],
            registry=registry,
        )
        self.wakes = Counter(
            "llmsvc_router_wakes_total",
            "POST /wake sent to a standby babysitter (for held requests, or demand past "
            "--wake-target), by model and outcome "
            "(woken, awake, refused, failed, unreachable).",
            ["model_name", "outcome"],
            registry=registry,
        )
        self._requests: dict[tuple[str, str, int], Counter] = {}
        self._duration: dict[str, Histogram] = {}
        self._ttfb: dict[str, Histogram] = {}
        self._shown: set[str] = set()
        self._models: set[str] = set()
        self._flow_models: set[str] = set()
        self._queue_wait: dict[tuple[str, str], Histogram] = {}
        self._rejected: dict[tuple[str, str, str], Counter] = {}
        self._tenant_requests: dict[tuple[str, str], Counter] = {}
        self._tenant_tokens: dict[tuple[str, str], Counter] = {}

    def count_request(self, model: str, backend: str, status: int, duration: float) -> None:
        key = (model, backend, status)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self.requests.labels(model, backend, str(status))
        child.inc()
        hist = self._duration.get(model)
        if hist is None:
            hist = self._duration[model] = self.duration.labels(model)
        hist.observe(duration)

    def observe_ttfb(self, model: str, seconds: float) -> None:
        hist = self._ttfb.get(model)
        if hist is None:
            hist = self._ttfb[model] = self.ttfb.labels(model)
        hist.observe(seconds)

    def refresh(self, pool: BackendPool, now: float) -> None:
        """Set the per-backend and per-model gauges from the pool; drop gone series.

        A model counts while some backend lists it, healthy or not: one whose backends
        are all unhealthy reads 0 (the "no healthy backend" alert), one that no backend
        lists any more (deregistered, removed after 2 x TTL) has no series, and nor has
        one whose backends are all in standby (scaled to zero on purpose, like a
        Kubernetes model at 0 replicas: no alert).
        """
        names = set()
        healthy_per_model: dict[str, int] = {}
        for backend in pool:
            names.add(backend.name)
            healthy = backend.healthy(now)
            self.in_flight.labels(backend.name).set(backend.in_flight)
            self.backend_healthy.labels(backend.name).set(1 if healthy else 0)
            down = not backend.passive.available(now)
            self.backend_passive_down.labels(backend.name).set(1 if down else 0)
            if backend.standby:
                continue  # idle on purpose: woken by the next request, not a fault
            for model in backend.models:
                healthy_per_model[model] = healthy_per_model.get(model, 0) + healthy
        for gone in self._shown - names:
            self.in_flight.remove(gone)
            self.backend_healthy.remove(gone)
            self.backend_passive_down.remove(gone)
        self._shown = names
        for model, count in healthy_per_model.items():
            self.model_healthy_backends.labels(model).set(count)
        for gone in self._models - healthy_per_model.keys():
            self.model_healthy_backends.remove(gone)
        self._models = set(healthy_per_model)

    def refresh_flow(self, demand: Mapping[str, ModelDemand]) -> None:
        """Set the queue, held and demand gauges of every known model; drop gone models.

        ``demand`` has every known model (demand 0 included), so a model without traffic
        reads 0 rather than vanishing, and one no longer known has no series.
        """
        for model, now in demand.items():
            for label in PRIORITY_LABELS:
                self.queue_requests.labels(model, label).set(now.queued.get(label, 0))
            self.held_requests.labels(model).set(now.held)
            self.model_demand.labels(model).set(now.total)
        for gone in self._flow_models - demand.keys():
            for label in PRIORITY_LABELS:
                self.queue_requests.remove(gone, label)
            self.held_requests.remove(gone)
            self.model_demand.remove(gone)
        self._flow_models = set(demand)

    def observe_queue_wait(self, model: str, priority: str, seconds: float) -> None:
        key = (model, priority)
        hist = self._queue_wait.get(key)
        if hist is None:
            hist = self._queue_wait[key] = self.queue_wait.labels(model, priority)
        hist.observe(seconds)

    def count_rejected(self, model: str, priority: str, reason: str) -> None:
        """Count one rejection; ``reason`` is one of :class:`Rejection`."""
        key = (model, priority, reason)
        child = self._rejected.get(key)
        if child is None:
            child = self._rejected[key] = self.rejected.labels(model, priority, reason)
        child.inc()

    def count_tenant(
        self,
        tenant: str,
        priority: str,
        prompt_tokens: int | None,
        completion_tokens: int | None,
    ) -> None:
        """Count one answered request of ``tenant`` and the tokens its usage reported."""
        key = (tenant, priority)
        child = self._tenant_requests.get(key)
        if child is None:
            child = self._tenant_requests[key] = self.tenant_requests.labels(tenant, priority)
        child.inc()
        if prompt_tokens:
            self._tokens(tenant, TokenKind.PROMPT).inc(prompt_tokens)
        if completion_tokens:
            self._tokens(tenant, TokenKind.COMPLETION).inc(completion_tokens)

    def count_wake(self, model: str, outcome: str) -> None:
        """Count one wake sent to a standby babysitter of ``model`` and how it went."""
        self.wakes.labels(model, outcome).inc()

    def _tokens(self, tenant: str, kind: TokenKind) -> Counter:
        key = (tenant, kind.value)
        child = self._tenant_tokens.get(key)
        if child is None:
            child = self._tenant_tokens[key] = self.tenant_tokens.labels(tenant, kind.value)
        return child
