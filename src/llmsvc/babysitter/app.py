"""The babysitter's HTTP API (engine port + 1) and the context that owns everything.

``create_app`` builds the app; its ``cleanup_ctx`` creates the HTTP session,
the :class:`Registrar` and the :class:`Supervisor`, runs the supervisor and the
heartbeat loop, and on shutdown deregisters both records and stops the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from llmsvc import __version__
from llmsvc.babysitter import api
from llmsvc.babysitter.engines import EngineSpec, Identity, build_engine, identity
from llmsvc.babysitter.metrics import BabysitterMetrics
from llmsvc.babysitter.registration import Registrar, babysitter_record
from llmsvc.babysitter.settings import BabysitterSettings
from llmsvc.babysitter.supervisor import Supervisor
from llmsvc.core.app import Route, every, make_app, supervised
from llmsvc.core.errors import ServiceUnavailable
from llmsvc.core.jsonio import model_response
from llmsvc.core.metrics import metrics_handler
from llmsvc.core.registry_client import RegistryClient

log = logging.getLogger("llmsvc.babysitter")


@dataclass
class Runtime:
    """Everything the handlers read; ``supervisor`` exists while the app runs."""

    settings: BabysitterSettings
    spec: EngineSpec
    ident: Identity
    registry: CollectorRegistry
    metrics: BabysitterMetrics
    supervisor: Supervisor | None = None
    registrar: Registrar | None = None

    def running(self) -> Supervisor:
        if self.supervisor is None:
            raise ServiceUnavailable("The babysitter is not running", code="not_running")
        return self.supervisor


RUNTIME = web.AppKey("runtime", Runtime)


async def health(request: web.Request) -> web.Response:
    sup = request.app[RUNTIME].running()
    if not sup.ready:
        raise ServiceUnavailable(
            f"Engine is not ready (state: {sup.state})", code="engine_not_ready"
        )
    return model_response(api.Health(status="ok", state=sup.state))


async def status(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    sup = rt.running()
    exit_ = sup.last_exit
    registered = rt.registrar.registered() if rt.registrar else {}
    registered.setdefault("engine", False)
    registered.setdefault("babysitter", False)
    body = api.Status(
        state=sup.state,
        pid=sup.proc.pid if sup.proc else None,
        restarts=sup.restarts,
        uptime_s=sup.uptime(),
        model=rt.settings.model,
        model_name=rt.ident.model_name,
        models=sup.model_ids(),
        engine=rt.settings.engine,
        name=rt.ident.name,
        url=rt.ident.advertised_url(),
        last_exit=api.LastExit.model_validate(exit_.as_json()) if exit_ else None,
        registered=api.Registered(**registered),
        router=rt.settings.router,
        registry=rt.settings.registry,
    )
    return model_response(body)


async def models(request: web.Request) -> web.Response:
    sup = request.app[RUNTIME].running()
    if not sup.models:
        raise ServiceUnavailable(
            f"Engine is not ready (state: {sup.state})", code="engine_not_ready"
        )
    return model_response(api.EngineModels(data=sup.models))


async def restart(request: web.Request) -> web.Response:
    sup = request.app[RUNTIME].running()
    if sup.stopping:
        raise ServiceUnavailable("The babysitter is shutting down", code="stopping")
    sup.request_restart()
    return model_response(api.RestartAccepted(restarting=True, state=sup.state), status=202)


async def drain(request: web.Request) -> web.Response:
    sup = request.app[RUNTIME].running()
    if sup.stopping:
        raise ServiceUnavailable("The babysitter is shutting down", code="stopping")
    return model_response(api.Drained.model_validate(await sup.drain()))


async def metrics(request: web.Request) -> web.Response:
    return metrics_handler(request.app[RUNTIME].registry)


ROUTES = (
    Route(
        "GET",
        "/health",
        health,
        "200 while the engine is ready",
        response=api.Health,
        errors={503: "the engine is not ready"},
    ),
    Route("GET", "/status", status, "State of the engine and its supervision", response=api.Status),
    Route(
        "GET",
        "/models",
        models,
        "The engine's models (OpenAI list)",
        response=api.EngineModels,
        errors={503: "the engine is not ready"},
    ),
    Route(
        "POST",
        "/restart",
        restart,
        "Restart the engine now (also out of 'failed')",
        response=api.RestartAccepted,
        status=202,
    ),
    Route(
        "POST",
        "/drain",
        drain,
        "Deregister the engine and wait for in-flight requests",
        response=api.Drained,
    ),
    Route("GET", "/metrics", metrics, "Prometheus metrics", response_media="text/plain"),
)


def create_app(
    settings: BabysitterSettings,
    *,
    engine_args: Sequence[str] = (),
    registry: CollectorRegistry | None = None,
) -> web.Application:
    """The babysitter's app; raises ``EngineConfigError`` when no engine can be built."""
    spec = build_engine(settings, engine_args)
    ident = identity(settings)
    registry = registry if registry is not None else CollectorRegistry()
    metrics_ = BabysitterMetrics(registry, model_name=ident.label)
    app = make_app(title="llmsvc babysitter", version=__version__, routes=ROUTES)
    app[RUNTIME] = Runtime(settings, spec, ident, registry, metrics_)
    app.cleanup_ctx.append(_lifecycle)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    rt = app[RUNTIME]
    s = rt.settings
    async with aiohttp.ClientSession() as session:
        rt.registrar = _registrar(s, rt.ident, session)
        rt.supervisor = Supervisor(
            settings=s,
            spec=rt.spec,
            ident=rt.ident,
            session=session,
            registrar=rt.registrar,
            metrics=rt.metrics,
        )
        run = supervised(rt.supervisor.run(), name="supervisor")
        beat = supervised(
            every(s.heartbeat_interval, rt.registrar.tick, name="heartbeat"), name="heartbeat"
        )
        yield
        beat.cancel()
        await rt.supervisor.shutdown()
        try:
            await asyncio.wait_for(asyncio.shield(run), s.stop_timeout + 10)
        except TimeoutError:
            log.error("the engine did not stop in time")
        run.cancel()
        for task in (beat, run):
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _registrar(s: BabysitterSettings, ident: Identity, session: aiohttp.ClientSession) -> Registrar:
    client = (
        RegistryClient(base_url=s.registry, session=session, token=s.registry_token)
        if s.registry
        else None
    )
    record = babysitter_record(
        engine_name=ident.name,
        host=ident.host,
        port=ident.port + 1,
        metadata={"engine": s.engine, "model_name": ident.model_name},
    )
    return Registrar(client=client, babysitter=record)
