"""The registry's HTTP API: handlers and the route table (their state: :mod:`.state`).

With a write token every route but ``/health``, ``/metrics`` (counts, no
addresses) and ``/openapi.json`` needs it or the admin token (:func:`registry_auth`);
the writes of a name also need its lease or the admin token (:mod:`.leases`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web

from llmsvc.core.app import Query, Route
from llmsvc.core.auth import BearerAuth
from llmsvc.core.errors import ApiError, BadRequest, NotFound
from llmsvc.core.jsonio import loads_object, model_response, read_body, read_model, validate_model
from llmsvc.core.metrics import metrics_handler
from llmsvc.core.records import (
    Heartbeat,
    RegisteredService,
    ServiceList,
    ServiceRecord,
    ServiceRegistration,
)
from llmsvc.core.registry_client import INDEX_HEADER
from llmsvc.registry.health import check_record
from llmsvc.registry.limits import check_metadata_size, check_room_for
from llmsvc.registry.maintenance_api import ROUTES as MAINTENANCE_ROUTES
from llmsvc.registry.models import (
    RegistryHealth,
    RegistryStats,
    ServiceCheck,
)
from llmsvc.registry.ownership import (
    CLAIM,
    LEASE,
    NOT_HOLDER,
    TAKEN,
    claim_name,
    log_claim,
    require_holder,
)
from llmsvc.registry.queries import MAX_INDEX, parse_service_query
from llmsvc.registry.settings import RegistrySettings
from llmsvc.registry.state import REGISTRY
from llmsvc.registry.store import ManagedElsewhere, ServiceStore

log = logging.getLogger("llmsvc.registry")

_UNAUTHORIZED = {401: "Missing or wrong bearer token: the write or admin token (with --token)."}
_BAD = {400: "Invalid body or parameters."}
_UNKNOWN = {404: "No service of that name."}
_TOO_LARGE = {413: "Body too large, or metadata over --max-metadata-bytes."}
_TOO_MANY = {
    429: "Over --max-records (a new name), or over --max-registrations-per-second "
    "from this client (see Retry-After)."
}


# -- helpers ---------------------------------------------------------------------


def registry_auth(settings: RegistrySettings) -> BearerAuth | None:
    """The routes marked ``protected`` need the write or the admin token as
    ``Authorization: Bearer``; with ``--allow-anonymous-writes`` they are open, and an
    admin token still marks the admin (who may override a lease)."""
    keys = (settings.token,) if settings.token is not None else ()
    admin = (settings.admin_token,) if settings.admin_token is not None else ()
    if not keys and not admin:
        return None
    return BearerAuth(
        keys=tuple(k.get_secret_value().encode() for k in keys),
        admin_keys=tuple(k.get_secret_value().encode() for k in admin),
        open=settings.allow_anonymous_writes,
        message="Missing or invalid bearer token in the Authorization header",
        code="invalid_token",
    )


def not_found(name: str, hint: str = "") -> NotFound:
    return NotFound(f"Unknown service '{name}'{hint}", param="name", code="service_not_found")


@contextmanager
def http_write() -> Iterator[None]:
    """A write to a record another source owns (Kubernetes) is a 409."""
    try:
        yield
    except ManagedElsewhere as exc:
        raise ApiError(
            f"Service '{exc.name}' comes from the {exc.source} source and cannot be "
            f"changed over HTTP; change the {exc.source} objects it comes from instead",
            status=409,
            param="name",
            code="managed_by_source",
        ) from None


def known(store: ServiceStore, name: str) -> ServiceRecord:
    record = store.get(name)
    if record is None:
        raise not_found(name)
    return record


# -- handlers --------------------------------------------------------------------


async def get_health(request: web.Request) -> web.Response:
    state = request.app[REGISTRY]
    stats = state.store.stats()
    kubernetes = state.kubernetes
    body = RegistryHealth(
        source=state.settings.source,
        services=stats.total,
        healthy=stats.healthy,
        index=state.store.index,
        uptime_s=state.uptime(),
        kubernetes=kubernetes() if kubernetes is not None else None,
    )
    return model_response(body)


async def list_services(request: web.Request) -> web.Response:
    query = parse_service_query(request.query)
    state = request.app[REGISTRY]
    store = state.store
    if query.index is not None:
        with state.metrics.blocking_queries.track_inprogress():
            await store.wait_for_change(query.index, query.wait)
    index, records = store.snapshot(healthy=query.healthy, type_=query.type_, model=query.model)
    key = (query.healthy, query.type_, query.model)
    # Every watcher woken by one change asks for the same answer: build it once per index.
    # (Plain reads are built fresh: heartbeats move timestamps without moving the index.)
    cache = state.answers
    if cache.index != index:
        cache.index, cache.bodies = index, {}
    body = cache.bodies.get(key) if query.index is not None else None
    if body is None:
        body = ServiceList(services=records, total=len(records)).model_dump_json().encode()
        if query.index is not None:
            cache.bodies[key] = body
    return web.Response(
        body=body, content_type="application/json", headers={INDEX_HEADER: str(index)}
    )


async def register_service(request: web.Request) -> web.Response:
    state = request.app[REGISTRY]
    state.registrations.admit(request.remote or "unknown")
    registration = await read_model(request, ServiceRegistration)
    check_metadata_size(registration.metadata, state.settings.max_metadata_bytes)
    check_room_for(state.store, registration.name, state.settings.max_records)
    with http_write():
        granted = claim_name(request, registration.name)
        record, created = state.store.register(registration)
    assert granted is not None  # the store refuses other sources' names
    state.leases.grant(record.name, granted.lease)
    state.metrics.registrations.inc()
    log_claim(record.name, granted)
    log.info(
        "registered %s" if created else "re-registered %s",
        record.name,
        extra={"url": record.url, "type": record.type},
    )
    body = RegisteredService.model_validate({**record.model_dump(), "lease": granted.lease})
    return model_response(body, status=granted.claim.status, headers=_index(request))


async def get_service(request: web.Request) -> web.Response:
    store = request.app[REGISTRY].store
    return model_response(known(store, request.match_info["name"]), headers=_index(request))


async def update_service(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    body = loads_object(await read_body(request))
    body.setdefault("name", name)
    if body["name"] != name:
        raise BadRequest(
            f"Body name {body['name']!r} differs from the name in the path {name!r}",
            param="name",
            code="name_mismatch",
        )
    registration = validate_model(ServiceRegistration, body)
    state = request.app[REGISTRY]
    check_metadata_size(registration.metadata, state.settings.max_metadata_bytes)
    require_holder(request, name)  # after the body's last await: checked as it is written
    with http_write():
        record = state.store.update(registration)
    if record is None:
        raise not_found(name)
    log.info("updated %s", name, extra={"url": record.url})
    return model_response(record, headers=_index(request))


async def deregister_service(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    require_holder(request, name)
    state = request.app[REGISTRY]
    with http_write():
        record = state.store.deregister(name)
    if record is None:
        raise not_found(name)
    state.leases.drop(name)
    state.metrics.deregistrations.inc()
    log.info("deregistered %s", name)
    return model_response(record, headers=_index(request))


async def heartbeat(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    body = await read_body(request)
    report = validate_model(Heartbeat, loads_object(body)) if body.strip() else Heartbeat()
    state = request.app[REGISTRY]
    require_holder(request, name)  # after the body's last await: checked as it is written
    with http_write():
        record = state.store.heartbeat(name, report.status)
    if record is None:
        raise not_found(name, "; register it again")
    state.metrics.heartbeats.inc()
    return model_response(record, headers=_index(request))


async def check_service(request: web.Request) -> web.Response:
    state = request.app[REGISTRY]
    store = state.store
    record = known(store, request.match_info["name"])
    result = await check_record(
        record,
        store=store,
        session=state.checks_session(),
        metrics=state.metrics,
        timeout=state.settings.health_timeout,
    )
    after = store.get(record.name) or record
    body = ServiceCheck(
        name=record.name,
        healthy=result.ok,
        url=result.url,
        http_status=result.http_status,
        error=result.error,
        latency_s=round(result.latency_s, 6),
        service=after,
    )
    return model_response(body, headers=_index(request))


async def get_stats(request: web.Request) -> web.Response:
    state = request.app[REGISTRY]
    stats = state.store.stats()
    body = RegistryStats(
        total=stats.total,
        healthy=stats.healthy,
        unhealthy=stats.unhealthy,
        standby=stats.standby,
        by_type=stats.by_type,
        by_model=stats.by_model,
        index=state.store.index,
        uptime_s=state.uptime(),
    )
    return model_response(body)


async def get_metrics(request: web.Request) -> web.Response:
    state = request.app[REGISTRY]
    state.metrics.refresh(state.store, state.maintenance)
    return metrics_handler(state.prometheus)


def _index(request: web.Request) -> dict[str, str]:
    return {INDEX_HEADER: str(request.app[REGISTRY].store.index)}


_NOT_BLANK = {"type": "string", "pattern": r"\S"}
_SERVICE_QUERY = (
    Query("healthy", "Only healthy (true) or unhealthy (false) services.", {"type": "boolean"}),
    Query("type", "Only services of this type (openai-api, babysitter, ...).", _NOT_BLANK),
    Query("model", "Only services whose metadata.models lists this model id.", _NOT_BLANK),
    Query(
        "index",
        "Blocking query: wait until the change index exceeds this.",
        {"type": "integer", "minimum": 0, "maximum": MAX_INDEX},
    ),
    Query(
        "wait",
        "Blocking query: longest wait (500ms, 30s, 1m, seconds; max 300s).",
        {"type": "string", "pattern": r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)(ms|s|m)?$"},
    ),
)

ROUTES = (
    Route("GET", "/health", get_health, "The registry's own health", response=RegistryHealth),
    Route(
        "GET",
        "/services",
        list_services,
        "List services (filters, blocking query)",
        description="The change index is in the X-Llmsvc-Index header. With ?index=N it "
        "answers as soon as the index differs from N, or after ?wait.",
        response=ServiceList,
        errors={**_BAD, **_UNAUTHORIZED},
        query=_SERVICE_QUERY,
        protected=True,
    ),
    Route(
        "POST",
        "/services",
        register_service,
        "Register a service (201 newly held, 200 replaced by its holder or the admin)",
        description="The answer carries the name's lease; its heartbeats, updates and "
        "deletes send it in X-Llmsvc-Lease. A name held by another registration is a 409 "
        "until its heartbeat expires (past --heartbeat-ttl), unless the admin token is sent.",
        request=ServiceRegistration,
        response=RegisteredService,
        status=201,
        also={200: "The holder (its lease) or the admin token replaced the registration."},
        errors={**_BAD, **_UNAUTHORIZED, **TAKEN, **_TOO_LARGE, **_TOO_MANY},
        query=(CLAIM,),
        protected=True,
    ),
    Route(
        "GET",
        "/services/{name}",
        get_service,
        "One service",
        response=ServiceRecord,
        errors={**_UNAUTHORIZED, **_UNKNOWN},
        protected=True,
    ),
    Route(
        "PUT",
        "/services/{name}",
        update_service,
        "Update a service's registration (its lease or the admin token)",
        request=ServiceRegistration,
        response=ServiceRecord,
        errors={**_BAD, **_UNAUTHORIZED, **_UNKNOWN, **NOT_HOLDER, **_TOO_LARGE},
        query=(LEASE,),
        protected=True,
    ),
    Route(
        "DELETE",
        "/services/{name}",
        deregister_service,
        "Deregister a service (its lease or the admin token); answers the removed record",
        response=ServiceRecord,
        errors={**_UNAUTHORIZED, **_UNKNOWN, **NOT_HOLDER},
        query=(LEASE,),
        protected=True,
    ),
    Route(
        "GET",
        "/services/{name}/health",
        check_service,
        "Check a service now",
        description="Makes the registry connect to the service: it needs the write or "
        "admin token whenever the registry has one.",
        response=ServiceCheck,
        errors={**_UNAUTHORIZED, **_UNKNOWN},
        protected=True,
    ),
    Route(
        "POST",
        "/services/{name}/heartbeat",
        heartbeat,
        "Refresh a service's heartbeat (its lease; 404: register again)",
        description='An optional body {"status": "healthy"|"unhealthy"|"standby"} reports the '
        "sender's own verdict, counted as a health check's result; standby (an idle engine "
        "stopped or asleep) holds until a heartbeat says otherwise or the TTL passes, and such a "
        "record is not health-checked.",
        request=Heartbeat,
        request_required=False,
        response=ServiceRecord,
        errors={**_BAD, **_UNAUTHORIZED, **_UNKNOWN, **NOT_HOLDER, 413: "Body too large."},
        query=(LEASE,),
        protected=True,
    ),
    Route(
        "GET",
        "/stats",
        get_stats,
        "Counts by status, type and model",
        response=RegistryStats,
        errors=_UNAUTHORIZED,
        protected=True,
    ),
    *MAINTENANCE_ROUTES,
    Route(
        "GET",
        "/metrics",
        get_metrics,
        "Prometheus metrics",
        response_media="text/plain; version=0.0.4",
    ),
)
