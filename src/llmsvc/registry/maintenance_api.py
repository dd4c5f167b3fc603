"""``/maintenance``: the maintenance entries over HTTP (the book: :mod:`.maintenance`).

Reads need what every read needs (the write or the admin token, when the
registry has one). Writes need the **admin** token: the write token that every
babysitter holds must not be able to take a model out of service. A registry
with a write token but no ``--admin-token`` refuses every maintenance write
(401, saying so); one in anonymous mode without an admin token lets anyone
write, as it does everything else.

``GET /maintenance?index=N&wait=30s`` is a blocking query on the registry's one
change index (the same as ``/services``'): a maintenance change moves it, and
so does an entry reaching its ``until`` (the wait ends then to drop it).
"""

from __future__ import annotations

import logging

from aiohttp import web

from llmsvc.core.app import Query, Route
from llmsvc.core.auth import Access, access_of
from llmsvc.core.errors import ApiError, BadRequest, NotFound, Unauthorized, echoed
from llmsvc.core.jsonio import model_response, read_model
from llmsvc.core.maintenance import (
    MAX_MODEL,
    DeletedMaintenance,
    MaintenanceEntry,
    MaintenanceList,
    MaintenanceRequest,
)
from llmsvc.core.registry_client import INDEX_HEADER
from llmsvc.registry.maintenance import HTTP, until_in_future
from llmsvc.registry.queries import MAX_INDEX, parse_service_query
from llmsvc.registry.state import REGISTRY, RegistryState

log = logging.getLogger("llmsvc.registry")

_EXPIRY_SLACK_S = 0.001
"""Seconds past an entry's ``until`` that a blocking query wakes to drop it."""

_ADMIN_ONLY = (
    "Maintenance changes need the registry's admin token (--admin-token) as "
    "'Authorization: Bearer <token>': the write token cannot take a model out of service"
)


def require_admin(request: web.Request) -> None:
    """401 unless the caller sent the admin token (or the registry is open to anyone)."""
    settings = request.app[REGISTRY].settings
    if access_of(request) is Access.ADMIN:
        return
    if settings.admin_token is None and settings.allow_anonymous_writes:
        return  # anonymous mode: every write is open, and there is no admin to ask for
    message = _ADMIN_ONLY
    if settings.admin_token is None:
        message += "; this registry has none: start it with --admin-token"
    raise Unauthorized(message, code="admin_token_required", headers={"WWW-Authenticate": "Bearer"})


def _model(request: web.Request) -> str:
    model = request.match_info["model"]
    if not model.strip() or len(model) > MAX_MODEL:
        raise BadRequest(
            f"Model id '{echoed(model)}' must be 1 to {MAX_MODEL} characters, not blank",
            param="model",
            code="invalid_value",
        )
    return model


def _backend(request: web.Request) -> str | None:
    value = request.query.get("backend")
    if value is not None and not value.strip():
        raise BadRequest(
            "Query parameter 'backend' must not be empty", param="backend", code="invalid_query"
        )
    return value


def _index(state: RegistryState) -> dict[str, str]:
    return {INDEX_HEADER: str(state.store.index)}


async def list_maintenance(request: web.Request) -> web.Response:
    # The same index, wait and model parameters as /services, with the same 400s.
    query = parse_service_query(
        {k: v for k, v in request.query.items() if k in ("index", "wait", "model")}
    )
    state = request.app[REGISTRY]
    book, store = state.maintenance, state.store
    book.expire()
    if query.index is not None:
        wait = query.wait
        end = book.next_end()
        if end is not None:  # wake when an entry ends: dropping it is a change
            wait = min(wait, max(0.0, end - book.now()) + _EXPIRY_SLACK_S)
        with state.metrics.blocking_queries.track_inprogress():
            await store.wait_for_change(query.index, wait)
        book.expire()
    entries = [e for e in book.entries() if query.model is None or e.model == query.model]
    body = MaintenanceList(maintenance=entries, total=len(entries))
    return model_response(body, headers=_index(state))


async def put_maintenance(request: web.Request) -> web.Response:
    require_admin(request)
    model = _model(request)
    body = await read_model(request, MaintenanceRequest)
    state = request.app[REGISTRY]
    problem = until_in_future(body, state.maintenance.now())
    if problem is not None:
        raise BadRequest(problem, param="until", code="invalid_value")
    entry = state.maintenance.put(model, body)
    target = f"{model} (backend {entry.backend})" if entry.backend else model
    until = entry.until.isoformat() if entry.until else "until deleted"
    log.info("maintenance on for %s, %s: %s", target, until, entry.message)
    return model_response(entry, headers=_index(state))


async def delete_maintenance(request: web.Request) -> web.Response:
    require_admin(request)
    model, backend = _model(request), _backend(request)
    state = request.app[REGISTRY]
    book = state.maintenance
    entry = book.delete(model, backend)
    if entry is None:
        what = f"model '{echoed(model)}'" + (f" backend '{echoed(backend)}'" if backend else "")
        others = [s for s in book.sources_of(model, backend) if s != HTTP]
        if others:
            raise ApiError(
                f"The maintenance of {what} comes from the {others[0]} source and cannot be "
                f"removed over HTTP; remove the llmsvc.io/maintenance annotation instead",
                status=409,
                param="model",
                code="managed_by_source",
            )
        raise NotFound(
            f"No maintenance entry for {what}", param="model", code="maintenance_not_found"
        )
    log.info("maintenance off for %s%s", model, f" (backend {backend})" if backend else "")
    return model_response(DeletedMaintenance(deleted=entry), headers=_index(state))


_UNAUTHORIZED = {401: "Missing or wrong bearer token (the write or admin token)."}
_ADMIN = {
    401: "admin_token_required: the admin token (--admin-token) is needed; the write "
    "token is refused. invalid_token: no accepted token at all."
}
_MODEL_PATH = "/maintenance/{model}"
_BACKEND = Query(
    "backend",
    "One backend's entry (its registry record name) instead of the model-wide one.",
    {"type": "string", "pattern": r"\S"},
)

ROUTES = (
    Route(
        "GET",
        "/maintenance",
        list_maintenance,
        "Maintenance entries in force (blocking query like /services)",
        description="The change index is in the X-Llmsvc-Index header; with ?index=N it "
        "answers as soon as the index differs from N (any change of the registry, a "
        "maintenance entry's among them), or after ?wait.",
        response=MaintenanceList,
        errors={400: "Invalid parameters.", **_UNAUTHORIZED},
        query=(
            Query("model", "Only this model's entries.", {"type": "string", "pattern": r"\S"}),
            Query(
                "index",
                "Blocking query: wait until the change index differs from this.",
                {"type": "integer", "minimum": 0, "maximum": MAX_INDEX},
            ),
            Query(
                "wait",
                "Blocking query: longest wait (500ms, 30s, 1m, seconds; max 300s).",
                {"type": "string", "pattern": r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)(ms|s|m)?$"},
            ),
        ),
        protected=True,
    ),
    Route(
        "PUT",
        _MODEL_PATH,
        put_maintenance,
        "Put a model (or one backend of it) in maintenance (admin token)",
        description="Routers answer new requests for the model 503 'maintenance' with the "
        "message and a Retry-After counting down to 'until'; running requests finish. A "
        "model id with '/' is sent with it encoded as %2F.",
        request=MaintenanceRequest,
        response=MaintenanceEntry,
        errors={400: "Invalid body: 'until' unparsable, without an offset or past.", **_ADMIN},
        protected=True,
    ),
    Route(
        "DELETE",
        _MODEL_PATH,
        delete_maintenance,
        "End a model's (or one backend's) maintenance (admin token)",
        response=DeletedMaintenance,
        errors={
            400: "Invalid parameters.",
            **_ADMIN,
            404: "No HTTP maintenance entry for the model (and backend).",
            409: "managed_by_source: the entry comes from Kubernetes annotations.",
        },
        query=(_BACKEND,),
        protected=True,
    ),
)
