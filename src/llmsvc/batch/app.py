"""The batch service's ``web.Application``: the API, the store, the runner beside them.

One process owns the store (SQLite under ``--data-dir``) and the runner that sends the
lines to the router; the runner starts with the app (it first puts back the lines a
crash left ``running``) and is cancelled, then the store closed, when the app stops.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry

from llmsvc import __version__
from llmsvc.batch.api import TENANT_HEADER, BatchApi, CreateBatch
from llmsvc.batch.metrics import BatchMetrics
from llmsvc.batch.runner import Runner
from llmsvc.batch.settings import BatchSettings
from llmsvc.batch.store import Store
from llmsvc.core.app import Query, Route, background, make_app
from llmsvc.core.auth import BearerAuth
from llmsvc.core.errors import Handler
from llmsvc.core.metrics import metrics_handler

BATCH_API = web.AppKey("batch_api", BatchApi)

_TENANT = Query(
    TENANT_HEADER,
    "The tenant asking (set by the router from the API key's name); none: the admin, "
    "who sees every tenant's objects",
    location="header",
)
_PAGE = (
    Query("limit", "Objects per page, 1 to 100 (default 20)", {"type": "integer"}),
    Query("after", "Continue after this id (the previous page's last_id)"),
)


def token_auth(settings: BatchSettings) -> BearerAuth | None:
    """Every path but the observers' needs ``--token`` when it is set (the router's
    ``--batch-token``)."""
    if settings.token is None:
        return None
    return BearerAuth(
        keys=(settings.token.get_secret_value().encode(),),
        message="Missing or invalid token: send 'Authorization: Bearer <--token>' "
        "(the router's --batch-token)",
        code="invalid_token",
    )


OBSERVER_PATHS = frozenset({"/health", "/metrics"})
"""The paths ``--metrics-token`` opens besides ``--token``: reading them runs nothing."""


def observer_auth(settings: BatchSettings) -> BearerAuth | None:
    """``--token`` or ``--metrics-token`` for :data:`OBSERVER_PATHS` when ``--token`` is set.

    Why a second token: ``--token`` also lets its holder run inference at the router as any
    tenant and read every tenant's batches; Prometheus and health checks need neither.
    """
    if settings.token is None:
        return None
    keys = [settings.token.get_secret_value().encode()]
    if settings.metrics_token is not None:
        keys.append(settings.metrics_token.get_secret_value().encode())
    return BearerAuth(
        keys=tuple(keys),
        message="Missing or invalid token: send 'Authorization: Bearer <--token>' "
        "or '<--metrics-token>'",
        code="invalid_token",
    )


def observer_guard(auth: BearerAuth) -> Middleware:
    """The 401 of :data:`OBSERVER_PATHS` (left unprotected in ``make_app``'s own check,
    which accepts ``--token`` alone) without one of ``auth``'s keys."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        observed = resource is not None and resource.canonical in OBSERVER_PATHS
        if observed and not auth.accepts(request.headers.get("Authorization")):
            raise auth.refusal()
        return await handler(request)

    return check


def _routes(api: BatchApi, registry: CollectorRegistry) -> list[Route]:
    auth = {401: "Missing or invalid token (when --token is set)"}
    observer_401 = {401: "Neither --token nor --metrics-token (when --token is set)"}
    file_404 = {**auth, 404: "No such file, or another tenant's (file_not_found)"}
    batch_404 = {**auth, 404: "No such batch, or another tenant's (batch_not_found)"}

    async def prometheus(_: web.Request) -> web.Response:
        return metrics_handler(registry)

    return [
        Route(
            "POST",
            "/v1/files",
            api.upload,
            "Upload a batch input file (multipart: file, purpose=batch)",
            description="Checked whole before it is stored: JSONL, one request per line "
            "(custom_id unique, method POST, one url and one model for every line).",
            errors={
                **auth,
                400: "Not a valid batch input file (message 'line N: ...'), or purpose not batch",
                413: "Larger than --max-file-bytes (file_too_large)",
            },
            query=(_TENANT,),
            protected=True,
        ),
        Route(
            "GET",
            "/v1/files",
            api.list_files,
            "The caller's files, newest first",
            errors=auth,
            query=(Query("purpose", "Only files of this purpose"), *_PAGE, _TENANT),
            protected=True,
        ),
        Route(
            "GET",
            "/v1/files/{file_id}",
            api.get_file,
            "A file object",
            errors=file_404,
            query=(_TENANT,),
            protected=True,
        ),
        Route(
            "DELETE",
            "/v1/files/{file_id}",
            api.delete_file,
            "Delete a file",
            errors=file_404,
            query=(_TENANT,),
            protected=True,
        ),
        Route(
            "GET",
            "/v1/files/{file_id}/content",
            api.file_content,
            "A file's content (input, output or error JSONL)",
            response_media="application/octet-stream",
            errors=file_404,
            query=(_TENANT,),
            protected=True,
        ),
        Route(
            "POST",
            "/v1/batches",
            api.create_batch,
            "Create a batch from an uploaded file",
            description="completion_window is a duration ('24h', '30m', '1h30m', up to 365d); "
            "the batch is in_progress at once and its lines run at priority batch.",
            request=CreateBatch,
            errors={
                **auth,
                400: "Bad endpoint, completion_window or metadata, or lines whose url is not "
                "the endpoint (mismatched_endpoint)",
                404: "No such input file, or another tenant's (file_not_found)",
            },
            query=(_TENANT,),
            protected=True,
        ),
        Route(
            "GET",
            "/v1/batches",
            api.list_batches,
            "The caller's batches, newest first",
            errors=auth,
            query=(*_PAGE, _TENANT),
            protected=True,
        ),
        Route(
            "GET",
            "/v1/batches/{batch_id}",
            api.get_batch,
            "A batch, with its llmsvc SLA view",
            errors=batch_404,
            query=(_TENANT,),
            protected=True,
        ),
        Route(
            "POST",
            "/v1/batches/{batch_id}/cancel",
            api.cancel_batch,
            "Cancel a batch: pending lines end batch_cancelled; then cancelled",
            errors={**batch_404, 409: "The batch has ended (batch_not_cancellable)"},
            query=(_TENANT,),
            protected=True,
        ),
        Route(
            "GET",
            "/sla/status",
            api.sla_status,
            "Active batches, earliest deadline first, with progress, ETA and SLA status",
            errors=auth,
            query=(_TENANT,),
            protected=True,
        ),
        Route(
            "GET",
            "/sla/report",
            api.sla_report,
            "How well the ETAs predicted the finishes (from the progress samples)",
            errors=auth,
            query=(_TENANT,),
            protected=True,
        ),
        Route(
            "GET",
            "/health",
            api.health,
            "Liveness, active batches, the current window",
            description="Opened by --token or --metrics-token.",
            errors=observer_401,
        ),
        Route(
            "GET",
            "/metrics",
            prometheus,
            "Prometheus metrics",
            description="Opened by --token or --metrics-token.",
            response_media="text/plain",
            errors=observer_401,
        ),
    ]


def create_app(
    settings: BatchSettings,
    *,
    store: Store | None = None,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    """The service: ``store`` defaults to SQLite under ``--data-dir`` (opened here, so that
    an unusable directory fails before the port is served: OSError)."""
    if store is None:
        from llmsvc.batch.sqlite_store import open_store

        store = open_store(settings)
    registry = CollectorRegistry()
    observers = observer_auth(settings)
    metrics = BatchMetrics(registry)
    runner = Runner(store, settings, metrics, clock=clock)
    api = BatchApi(settings=settings, store=store, runner=runner, clock=clock)
    app = make_app(
        title="llmsvc batch",
        version=__version__,
        routes=_routes(api, registry),
        auth=token_auth(settings),
        middlewares=() if observers is None else (observer_guard(observers),),
        read_timeout=settings.read_timeout,
    )
    app[BATCH_API] = api
    app.cleanup_ctx.append(_store_ctx(store))
    app.cleanup_ctx.append(background("batch-runner", lambda _: runner.run()))
    return app


def _store_ctx(store: Store) -> Callable[[web.Application], AsyncIterator[None]]:
    """``cleanup_ctx``: close the store after the runner (appended after it) stopped."""

    async def ctx(_: web.Application) -> AsyncIterator[None]:
        yield
        store.close()

    return ctx
