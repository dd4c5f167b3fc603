"""The router's ``web.Application``: routes, API keys, upstream session, background loops.

Two credentials guard two surfaces: API keys (``--api-keys``) the routed paths
(``/v1/*``), the admin token (``--admin-token``) the operational views that show
every backend's address (``/stats``, ``/services``, ``/metrics``). Neither opens
the other's paths; ``/health`` and ``/openapi.json`` stay open.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from pydantic import BaseModel

from llmsvc import __version__
from llmsvc.core.app import Route, background, every, make_app, owned_task
from llmsvc.core.auth import BearerAuth
from llmsvc.core.errors import Handler, ModelNotFound, ServiceUnavailable
from llmsvc.core.jsonio import json_response, model_response
from llmsvc.core.metrics import metrics_handler
from llmsvc.core.registry_client import RegistryClient
from llmsvc.core.wire import (
    INFERENCE_PATHS,
    MULTIPART,
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    ModelCard,
    ModelList,
    RerankRequest,
    ResponsesRequest,
    ScoreRequest,
    TokenizeRequest,
    TranscriptionRequest,
)
from llmsvc.router.accesslog import REQUEST_ID_HEADER, request_id
from llmsvc.router.admission import FlowControl
from llmsvc.router.backends import BackendPool
from llmsvc.router.balancing import Strategy, make_strategy
from llmsvc.router.batchproxy import BATCH_PATHS, BatchProxy, is_batch_path
from llmsvc.router.config import check_settings, load_static_services
from llmsvc.router.demand import demand_view, model_fleet
from llmsvc.router.discovery import watch_registry
from llmsvc.router.ejection import LATENCY_ROUND_S, Ejector
from llmsvc.router.health import check_loop
from llmsvc.router.loadscore import max_load_age
from llmsvc.router.loadscrape import load_scrape_ctx
from llmsvc.router.maintenance import Maintenance, watch_maintenance
from llmsvc.router.metrics import RouterMetrics
from llmsvc.router.outliers import OutlierRules
from llmsvc.router.proxy import Proxy
from llmsvc.router.ratelimit import add_rate_headers
from llmsvc.router.readiness import REGISTRY, STATIC, Readiness
from llmsvc.router.scoring import Scored
from llmsvc.router.settings import RouterSettings
from llmsvc.router.stats import RouterStats
from llmsvc.router.suspicion import Suspicion
from llmsvc.router.tenants import KeyRing, KeysFile, load_keyring, tenant_middleware
from llmsvc.router.wake import Waker

log = logging.getLogger("llmsvc.router")

# Upstream connection pool: enough for thousands of concurrent streams, with
# idle connections kept for reuse between requests.
UPSTREAM_CONNECTION_LIMIT = 4096
UPSTREAM_KEEPALIVE_S = 60.0
# With --workers, how stale one worker's part of the in-flight and health gauges may be.
WORKER_GAUGE_INTERVAL_S = 1.0


@dataclass(eq=False)
class RouterState:
    """Everything the router's handlers share; ``proxy`` exists while the app runs."""

    settings: RouterSettings
    pool: BackendPool
    strategy: Strategy
    metrics: RouterMetrics
    stats: RouterStats
    registry: CollectorRegistry
    keys: KeyRing  # the keys read at start; ``api_keys`` is the current ring
    scrape: CollectorRegistry  # what /metrics renders: ``registry``, or all workers' sum
    readiness: Readiness
    flow: FlowControl
    proxy: Proxy | None = field(default=None)
    maintenance: Maintenance = field(default_factory=Maintenance)
    """The registry's maintenance entries (kept by the registry watch; none without one)."""
    keys_file: KeysFile | None = field(default=None)  # a watched --api-keys-file
    waker: Waker | None = field(default=None)  # wakes standby engines (with a registry)

    @property
    def api_keys(self) -> KeyRing:
        """The accepted API keys now: the last good read of a changed --api-keys-file."""
        return self.keys_file.ring if self.keys_file is not None else self.keys

    async def inference(self, request: web.Request) -> web.StreamResponse:
        if not self.readiness.ready:
            # Starting: hold the request until the backends are known, not a 503 now.
            await self.readiness.wait(self.settings.proxy_connect_timeout)
        proxy = self.proxy
        if proxy is None:
            raise ServiceUnavailable("The router is starting or stopping")
        return await proxy.handle(request)

    async def models(self, _: web.Request) -> web.Response:
        ids = self.pool.known_models()  # every known model, as the contract says
        return model_response(ModelList(data=[ModelCard(id=i) for i in ids]))

    async def model(self, request: web.Request) -> web.Response:
        """One model of :meth:`models` (the ``openai`` client's ``models.retrieve``); 404
        ``model_not_found`` for one no record lists, as the routed paths answer it."""
        model = request.match_info["model"]
        if not self.pool.knows(model):
            raise ModelNotFound(model)
        return model_response(ModelCard(id=model))

    async def health(self, _: web.Request) -> web.Response:
        now = time.monotonic()
        healthy = sum(1 for b in self.pool if b.healthy(now))
        body: dict[str, Any] = {
            "status": "ok",
            "backends": len(self.pool),
            "healthy_backends": healthy,
            "models": len(self.pool.healthy_models(now)),
        }
        if not self.readiness.ready:  # not ready: no first sync or static check yet
            body |= {"status": "starting", "waiting_for": self.readiness.waiting_for()}
            return json_response(body, status=503)
        return json_response(body)

    async def stats_view(self, _: web.Request) -> web.Response:
        return json_response(self.stats.render(self.pool, time.monotonic()))

    async def services(self, _: web.Request) -> web.Response:
        now = time.monotonic()
        views = [b.view(now) for b in self.pool]
        if isinstance(self.strategy, Scored):  # what its prefix index holds of each
            for backend, view in zip(self.pool, views, strict=True):
                view["prefix_index"] = self.strategy.view(backend)
        return json_response({"services": views, "total": len(views)})

    async def prometheus(self, _: web.Request) -> web.Response:
        self.metrics.refresh(self.pool, time.monotonic())
        self.metrics.refresh_flow(self.flow.snapshot())
        return metrics_handler(self.scrape)

    async def demand(self, _: web.Request) -> web.Response:
        snapshot = self.flow.snapshot()
        now = time.monotonic()
        max_age = max_load_age(self.settings.load_scrape_interval)
        pool = self.pool
        fleet = {m: model_fleet(pool.eligible(m, now).backends, now, max_age) for m in snapshot}
        return json_response(demand_view(snapshot, fleet))

    async def drain(self, _: web.Application) -> None:
        """``on_shutdown``: stop admitting; answer what still waits before the end."""
        self.flow.drain(self.settings.shutdown_timeout)


ROUTER = web.AppKey("router", RouterState)


def admin_auth(settings: RouterSettings) -> BearerAuth | None:
    """What ``/stats``, ``/services`` and ``/metrics`` need: the admin token, if set."""
    if settings.admin_token is None:
        return None
    return BearerAuth(
        keys=(settings.admin_token.get_secret_value().encode(),),
        message="Missing or invalid admin token: send 'Authorization: Bearer <--admin-token>'",
        code="invalid_token",
    )


def _admin_routes(state: RouterState) -> list[Route]:
    """The views of every backend's address: the admin token's (when set)."""
    admin = {401: "Missing or invalid admin token (when --admin-token is set)"}
    views: list[tuple[str, Handler, str, str | None]] = [
        ("/stats", state.stats_view, "Per backend and per model statistics", None),
        ("/services", state.services, "The router's view of its backends", None),
        ("/metrics", state.prometheus, "Prometheus metrics", "text/plain"),
        (
            "/demand",
            state.demand,
            "Per model: in flight, queued by class, held; its ready backends and KV-cache use",
            None,
        ),
    ]
    return [
        Route("GET", path, handler, summary, response_media=media, errors=admin, protected=True)
        for path, handler, summary, media in views
    ]


_BODIES: dict[str, type[BaseModel]] = {
    "/chat/completions": ChatCompletionRequest,
    "/completions": CompletionRequest,
    "/embeddings": EmbeddingRequest,
    "/responses": ResponsesRequest,
    "/rerank": RerankRequest,
    "/score": ScoreRequest,
    "/tokenize": TokenizeRequest,
    "/detokenize": DetokenizeRequest,
    "/audio/transcriptions": TranscriptionRequest,
}
"""What ``/openapi.json`` says of each routed body (the router reads only ``model``,
``stream`` and ``user``; the engine defines the rest)."""
_UPLOADS = frozenset({"/v1/audio/transcriptions"})  # multipart/form-data bodies


def _routes(state: RouterState) -> list[Route]:
    errors = {
        400: "Malformed JSON, missing/invalid 'model', or an unknown X-Llmsvc-Priority",
        401: "Missing or invalid API key",
        403: "The API key may not use the model (model_not_allowed)",
        404: "No record lists the model in any state (model_not_found: do not retry)",
        413: "Body larger than --max-body-bytes",
        429: "The model's queue is full or a higher class evicted the request (queue_full), "
        "or the key is over its rpm/tpm (rate_limit_exceeded); see Retry-After",
        502: "Every backend tried failed",
        503: "No ready backend within --hold-timeout (no_healthy_backend), a wait for a slot "
        "past --queue-timeout (queue_timeout), the model in maintenance (maintenance), or "
        "the router stopping (draining); see Retry-After",
        504: "Every backend tried timed out",
    }
    table = [
        Route(
            "POST",
            path,
            state.inference,
            "Forward to a healthy backend serving the request's model",
            description="One rule for every model-addressed endpoint (core.wire."
            "INFERENCE_PATHS): the JSON body's 'model', or the multipart form's 'model' "
            "field; the body is forwarded untouched, streams pass through chunk by chunk. "
            "The response carries X-Llmsvc-Backend.",
            request=_BODIES[path.removeprefix("/v1").removeprefix("/v2")],
            request_media=MULTIPART if path in _UPLOADS else "application/json",
            response_media=("application/json", "text/event-stream")
            + (("text/plain",) if path in _UPLOADS else ()),  # response_format=text
            errors=errors,
        )
        for path in INFERENCE_PATHS
    ]
    for prefix in ("/v1", ""):
        table.append(
            Route(
                "GET",
                prefix + "/models",
                state.models,
                "Models of the healthy backends, each once",
                response=ModelList,
                errors={401: "Missing or invalid API key"},
            )
        )
        table.append(
            Route(
                "GET",
                prefix + "/models/{model:.+}",
                state.model,
                "One known model (a model id may hold '/')",
                response=ModelCard,
                errors={401: "Missing or invalid API key", 404: "No record lists the model"},
            )
        )
    table.append(Route("GET", "/health", state.health, "Router health and healthy backend count"))
    return table + _admin_routes(state)


def _upstream_ctx(state: RouterState) -> Callable[[web.Application], AsyncIterator[None]]:
    """``cleanup_ctx``: the upstream session, the proxy and the active health checks."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings = state.settings
        connector = aiohttp.TCPConnector(
            limit=UPSTREAM_CONNECTION_LIMIT,
            limit_per_host=0,
            keepalive_timeout=UPSTREAM_KEEPALIVE_S,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            # A proxy keeps no cookies: a backend's Set-Cookie is the client's (passed on),
            # never sent back by the router with another client's requests.
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        # Health checks and suspicion probes on a pool of their own (one connection per
        # backend): aiohttp reuses idle connections oldest first, so checks on the proxy's
        # pool would keep every idle connection of a past burst open for good (the soak
        # saw them never close).
        checks = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=0, limit_per_host=0, keepalive_timeout=UPSTREAM_KEEPALIVE_S
            )
        )
        ejector = Ejector(pool=state.pool, metrics=state.metrics, rules=_outlier_rules(settings))
        suspicion = Suspicion(
            session=checks,
            ejector=ejector,
            metrics=state.metrics,
            after=settings.suspect_after,
            timeout=settings.health_timeout,
        )
        state.proxy = Proxy(
            settings=settings,
            pool=state.pool,
            strategy=state.strategy,
            session=session,
            metrics=state.metrics,
            stats=state.stats,
            suspicion=suspicion,
            ejector=ejector,
            drop_auth=bool(state.api_keys),
            flow=state.flow,
        )
        health = check_loop(
            checks,
            state.pool,
            interval=settings.health_interval,
            timeout=settings.health_timeout,
            ejector=ejector,
            after_round=lambda: state.readiness.done(STATIC),
        )
        outliers = every(LATENCY_ROUND_S, _async(ejector.latency_round), name="outliers")
        async with owned_task(health, name="health"), owned_task(outliers, name="outliers"):
            yield
            state.proxy = None
        await suspicion.close()
        await session.close()
        await checks.close()

    return ctx


def _outlier_rules(settings: RouterSettings) -> OutlierRules:
    return OutlierRules(
        consecutive_failures=settings.outlier_consecutive_failures,
        latency_factor=settings.outlier_latency_factor,
        ejection_time=settings.outlier_ejection_time,
        max_ejection_percent=settings.outlier_max_ejection_percent,
    )


def _async(fn: Callable[[], None]) -> Callable[[], Coroutine[Any, Any, None]]:
    async def call() -> None:
        fn()

    return call


def _registry_ctx(
    state: RouterState, registry_url: str
) -> Callable[[web.Application], AsyncIterator[None]]:
    """``cleanup_ctx``: the registry watches (records, maintenance entries), on their own
    session (their queries block)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings = state.settings
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=4))
        client = RegistryClient(
            base_url=registry_url,
            session=session,
            token=token.get_secret_value() if (token := settings.registry_token) else None,
            timeout=settings.registry_timeout,
        )

        def synced() -> None:
            state.strategy.forget(state.pool.removed_names())
            state.readiness.done(REGISTRY)

        watch = watch_registry(
            client,
            state.pool,
            state.metrics,
            wait=settings.registry_sync_interval,
            grace=settings.registry_restart_grace,
            on_change=synced,
        )
        maintenance = watch_maintenance(
            client,
            state.maintenance,
            wait=settings.registry_sync_interval,
            # The request path reads the board at every request; a backend back from its
            # maintenance may take queued requests.
            on_change=state.flow.dispatcher.pump_all,
        )
        waker = state.waker
        wakes = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16))
        if waker is not None:
            waker.attach(wakes)
        async with (
            owned_task(watch, name="registry-watch"),
            owned_task(maintenance, name="maintenance-watch"),
        ):
            yield
        if waker is not None:
            await waker.close()
        await wakes.close()
        await session.close()

    return ctx


def create_app(
    settings: RouterSettings,
    *,
    registry: CollectorRegistry | None = None,
    metrics_dir: str | None = None,
) -> web.Application:
    """The router app; :class:`~llmsvc.router.config.ConfigError` for bad files or options.

    ``metrics_dir``: this is one of several worker processes (``--workers``) whose
    metrics live in that ``PROMETHEUS_MULTIPROC_DIR``; ``/metrics`` reports their sum.
    """
    check_settings(settings)
    keyring = load_keyring(settings)
    pool = BackendPool(max_fails=settings.max_fails, fail_timeout=settings.fail_timeout)
    if settings.static_services:
        pool.set_static(load_static_services(settings.static_services))
    registry = registry if registry is not None else CollectorRegistry()
    strategy = make_strategy(settings, pool)
    metrics = RouterMetrics(registry)
    maintenance = Maintenance()
    waits_for = [REGISTRY] if settings.registry_url else []
    waits_for += [STATIC] if settings.static_services else []
    state = RouterState(
        settings=settings,
        pool=pool,
        strategy=strategy,
        metrics=metrics,
        stats=RouterStats(),
        registry=registry,
        keys=keyring,
        scrape=_scrape_registry(metrics_dir) if metrics_dir else registry,
        readiness=Readiness(waits_for, timeout=settings.ready_timeout),
        maintenance=maintenance,
        flow=FlowControl(
            pool=pool,
            strategy=strategy,
            settings=settings,
            metrics=metrics,
            maintenance=maintenance,
        ),
    )
    app = make_app(
        title="llmsvc router",
        version=__version__,
        routes=_routes(state),
        client_max_size=settings.max_body_bytes,
        middlewares=_tenancy(state),
        read_timeout=settings.read_timeout,
        auth=admin_auth(settings),
    )
    if keyring and settings.admin_token is None and metrics_dir is None:  # once, not per worker
        log.warning(
            "/stats, /services and /metrics need no token (no --admin-token): anyone who "
            "can reach port %d sees every backend's address",
            settings.port,
        )
    if settings.registry_url:  # standby babysitters are registry records
        token = settings.registry_token
        state.waker = waker = Waker(
            pool,
            held=state.flow.holds.count,
            token=token.get_secret_value() if token else None,
            memory=settings.hold_timeout,
            count=metrics.count_wake,
            demand=state.flow.model_demand,
            target=settings.wake_target,
        )
        state.flow.holds.on_held(waker.consider)
        if settings.wake_target > 0:
            state.flow.on_demand = waker.grew
    app[ROUTER] = state
    batch = BatchProxy(settings)  # /v1/files*, /v1/batches*: the batch service's
    for path in BATCH_PATHS:
        app.router.add_route("*", path, batch.handle)
    app.cleanup_ctx.append(_batch_ctx(batch))
    app.on_shutdown.append(state.drain)
    app.on_response_prepare.append(_on_prepare)
    if settings.api_keys_file:  # re-read when it changes
        keys_file = state.keys_file = KeysFile(settings, keyring)
        app.cleanup_ctx.append(background("keys-file", lambda _: keys_file.run()))
    app.cleanup_ctx.append(background("readiness", lambda _: state.readiness.expire()))
    app.cleanup_ctx.append(_upstream_ctx(state))
    if settings.registry_url:
        app.cleanup_ctx.append(_registry_ctx(state, settings.registry_url))
    if settings.strategy in ("least_load", "scored"):  # the engines' metrics: only for them
        interval = settings.load_scrape_interval
        app.cleanup_ctx.append(
            load_scrape_ctx(
                pool,
                interval=interval,
                registry=registry,
                after_round=state.flow.dispatcher.pump_all,  # saturation ends with no event
            )
        )
    if metrics_dir:
        app.cleanup_ctx.append(background("worker-gauges", _gauge_refresher(state)))
    return app


def _tenancy(state: RouterState) -> list[Middleware]:
    """The tenant middleware, when there are API keys or a --batch-token (whose bearer
    runs as the tenant it names, keys or not)."""
    token = state.settings.batch_token
    if not state.keys and token is None:
        return []
    return [
        tenant_middleware(
            lambda: state.api_keys,
            batch_token=token.get_secret_value().encode() if token is not None else None,
            admin_paths=is_batch_path,
        )
    ]


def _batch_ctx(batch: BatchProxy) -> Callable[[web.Application], AsyncIterator[None]]:
    """``cleanup_ctx``: the batch proxy's session to the batch service."""

    async def ctx(_: web.Application) -> AsyncIterator[None]:
        await batch.start()
        yield
        await batch.close()

    return ctx


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer carries its request's ``X-Request-Id`` (the client's, or a new one)
    and its rate-limit grant's headers (``ratelimit.add_rate_headers``): one signal
    handler for both, since each one costs a coroutine per answer."""
    response.headers[REQUEST_ID_HEADER] = request_id(request)
    add_rate_headers(request, response)


def _scrape_registry(metrics_dir: str) -> CollectorRegistry:
    """A registry that collects the metrics of every worker from ``metrics_dir``."""
    scrape = CollectorRegistry()
    MultiProcessCollector(scrape, path=metrics_dir)  # type: ignore[no-untyped-call]
    return scrape


def _gauge_refresher(
    state: RouterState,
) -> Callable[[web.Application], Coroutine[Any, Any, None]]:
    """With several workers a scrape reads every worker's gauges, not only its own:
    each worker refreshes its part every :data:`WORKER_GAUGE_INTERVAL_S` seconds."""

    async def refresh() -> None:
        state.metrics.refresh(state.pool, time.monotonic())
        state.metrics.refresh_flow(state.flow.snapshot())

    def factory(_: web.Application) -> Coroutine[Any, Any, None]:
        return every(WORKER_GAUGE_INTERVAL_S, refresh, name="worker-gauges")

    return factory
