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
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from llmsvc import __version__
from llmsvc.babysitter import api
from llmsvc.babysitter.engines import EngineConfigError, Identity, build_engine, identity
from llmsvc.babysitter.leases import LeaseFile
from llmsvc.babysitter.metrics import BabysitterMetrics
from llmsvc.babysitter.output import EngineOutput, safe_name
from llmsvc.babysitter.registration import Registrar, babysitter_record
from llmsvc.babysitter.resources import ResourceSampler
from llmsvc.babysitter.settings import BabysitterSettings
from llmsvc.babysitter.supervisor import Supervisor
from llmsvc.babysitter.swap import Served, SwapRequest
from llmsvc.babysitter.termination import GiveUp
from llmsvc.core.app import Route, every, make_app, supervised
from llmsvc.core.auth import BearerAuth
from llmsvc.core.errors import ApiError, BadRequest, ServiceUnavailable
from llmsvc.core.jsonio import model_response, read_model
from llmsvc.core.metrics import metrics_handler
from llmsvc.core.registry_client import RegistryClient

log = logging.getLogger("llmsvc.babysitter")


@dataclass
class Runtime:
    """Everything the handlers read; ``supervisor`` exists while the app runs."""

    settings: BabysitterSettings
    served: Served  # what the first engine is launched with
    ident: Identity
    registry: CollectorRegistry
    metrics: BabysitterMetrics
    give_up: GiveUp = field(default_factory=GiveUp)  # the supervisor's; serve() waits on it
    supervisor: Supervisor | None = None
    registrar: Registrar | None = None
    swap_task: asyncio.Task[None] | None = None

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
    return model_response(request.app[RUNTIME].running().snapshot())


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


async def swap_model(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    sup = rt.running()
    if sup.stopping:
        raise ServiceUnavailable("The babysitter is shutting down", code="stopping")
    body = await read_model(request, SwapRequest)
    if sup.swapping:
        raise ApiError("A model swap is already in progress", status=409, code="swap_in_progress")
    target = served(rt.settings, body.model, body.model_name, body.engine_args, sup.served)
    before = sup.served.model
    rt.swap_task = supervised(sup.begin_swap(target, rollback=body.rollback), name="swap")
    accepted = api.SwapAccepted(
        swapping=True, state=sup.state, from_model=before, to_model=body.model
    )
    return model_response(accepted, status=202)


def served(
    settings: BabysitterSettings,
    model: str | None,
    model_name: str | None,
    engine_args: Sequence[str] | None,
    current: Served | None = None,
) -> Served:
    """What an engine for ``model`` is launched with; a 400 when no command line can be made."""
    changed = settings.model_copy(update={"model": model, "model_name": model_name})
    args = (
        tuple(engine_args) if engine_args is not None else (current.engine_args if current else ())
    )
    try:
        spec = build_engine(changed, args)
    except EngineConfigError as exc:
        raise BadRequest(str(exc), param="model", code="invalid_value") from None
    return Served(model, identity(changed).model_name, args, spec)


async def wake(request: web.Request) -> web.Response:
    sup = request.app[RUNTIME].running()
    if sup.stopping:
        raise ServiceUnavailable("The babysitter is shutting down", code="stopping")
    woken = sup.wake()
    return model_response(api.WakeAccepted(state=sup.state), status=202 if woken else 200)


async def drain(request: web.Request) -> web.Response:
    sup = request.app[RUNTIME].running()
    if sup.stopping:
        raise ServiceUnavailable("The babysitter is shutting down", code="stopping")
    return model_response(await sup.drain())


async def stop(request: web.Request) -> web.Response:
    sup = request.app[RUNTIME].running()
    if sup.stopping:
        raise ServiceUnavailable("The babysitter is shutting down", code="stopping")
    if sup.swapping:
        raise ApiError("A model swap is in progress", status=409, code="swap_in_progress")
    return model_response(await sup.stop_engine())


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
        "Restart the engine now (also out of 'crash-loop' and 'failed')",
        response=api.RestartAccepted,
        status=202,
        errors={401: "no or a wrong registry token (when the babysitter has one)"},
        protected=True,
    ),
    Route(
        "POST",
        "/model",
        swap_model,
        "Swap the engine's model: drain, stop, wait for GPU memory, start, register",
        description="Answers 202 at once; /status shows the swap's progress under 'swap'. "
        "A new model that fails to become ready is replaced by the previous one again "
        "unless 'rollback' is false.",
        request=SwapRequest,
        response=api.SwapAccepted,
        status=202,
        errors={
            400: "invalid body",
            401: "no or a wrong registry token (when the babysitter has one)",
            409: "a swap is already in progress",
            503: "the babysitter is shutting down",
        },
        protected=True,
    ),
    Route(
        "POST",
        "/drain",
        drain,
        "Deregister the engine and wait for in-flight requests",
        response=api.Drained,
        errors={401: "no or a wrong registry token (when the babysitter has one)"},
        protected=True,
    ),
    Route(
        "POST",
        "/stop",
        stop,
        "Drain, stop the engine and wait until its GPU memory is free; POST /restart resumes",
        description="Answers when the engine's processes are gone and each GPU's free memory "
        "has come back (at most --gpu-release-timeout), as a model swap waits. The state "
        "stays 'drained' with no engine process until POST /restart (llmsvc exclusive).",
        response=api.Stopped,
        errors={
            401: "no or a wrong registry token (when the babysitter has one)",
            409: "a swap is in progress",
            503: "the babysitter is shutting down",
        },
        protected=True,
    ),
    Route(
        "POST",
        "/wake",
        wake,
        "Wake the engine from standby (--idle-timeout): 202 when it was in standby",
        description='Answers at once: 202 {"state": "waking"} when the engine was in '
        "standby (stopped: launched again; asleep: POST /wake_up), 200 with the state now "
        "when it was not (running, starting, waking: nothing to do).",
        response=api.WakeAccepted,
        status=202,
        also={200: "not in standby: nothing to do"},
        errors={
            401: "no or a wrong registry token (when the babysitter has one)",
            503: "the babysitter is shutting down",
        },
        protected=True,
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
    try:
        first = served(settings, settings.model, settings.model_name, engine_args)
    except BadRequest as exc:
        raise EngineConfigError(exc.message) from None
    ident = identity(settings)
    registry = registry if registry is not None else CollectorRegistry()
    metrics_ = BabysitterMetrics(registry, model_name=ident.label)
    app = make_app(
        title="llmsvc babysitter",
        version=__version__,
        routes=ROUTES,
        read_timeout=settings.read_timeout,
        auth=control_auth(settings),
    )
    app[RUNTIME] = Runtime(settings, first, ident, registry, metrics_)
    app.cleanup_ctx.append(_lifecycle)
    return app


CONTROL_PATHS = tuple(f"{r.method} {r.path}" for r in ROUTES if r.protected)


def control_auth(settings: BabysitterSettings) -> BearerAuth | None:
    """What the control endpoints (``POST /drain``, ``/restart``, ``/model``) need: the
    registry token; None (open, with a WARNING) when the babysitter has none."""
    token = settings.registry_token
    if token is None:
        log.warning("the control endpoints %s need no token (no --registry-token): anyone "
                    "who can reach port %d can drain, restart and swap the engine",
                    ", ".join(CONTROL_PATHS), settings.port + 1)  # fmt: skip
        return None
    return BearerAuth(
        keys=(token.get_secret_value().encode(),),
        message="Missing or invalid bearer token: the babysitter's control endpoints need "
        "its registry token in the Authorization header",
    )


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    rt = app[RUNTIME]
    s = rt.settings
    output = EngineOutput(
        log_dir=s.log_dir, name=rt.ident.name, max_bytes=s.log_max_bytes, backups=s.log_backups
    )
    try:
        async with aiohttp.ClientSession() as session:
            rt.registrar = _registrar(s, rt.ident, session)
            rt.supervisor = Supervisor(
                settings=s,
                served=rt.served,
                ident=rt.ident,
                session=session,
                registrar=rt.registrar,
                metrics=rt.metrics,
                output=output,
                give_up=rt.give_up,
            )
            run = supervised(rt.supervisor.run(), name="supervisor")
            beat = supervised(
                every(s.heartbeat_interval, rt.registrar.tick, name="heartbeat"), name="heartbeat"
            )
            looks = _resource_looks(rt, rt.supervisor)
            yield
            beat.cancel()
            if looks is not None:
                looks.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await looks
            await _stop(rt, rt.supervisor, run)
            for task in (beat, run, rt.swap_task):
                if task is not None:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
    finally:
        output.close()


def _resource_looks(rt: Runtime, sup: Supervisor) -> asyncio.Task[None] | None:
    """The GPU and host-memory series (:mod:`resources`), every ``--resource-interval``."""
    s = rt.settings
    if not s.resource_interval:
        return None
    sampler = ResourceSampler(
        probe=s.gpu_probe,
        gpus=s.gpus,
        engine_pid=lambda: sup.engine_pid,
        publish=rt.metrics.resources,
    )
    return supervised(every(s.resource_interval, sampler.tick, name="resources"), name="resources")


async def _stop(rt: Runtime, sup: Supervisor, run: asyncio.Task[None]) -> None:
    """Drain and stop the engine (``--drain-timeout``, then ``--stop-timeout``)."""
    if rt.swap_task is not None:
        rt.swap_task.cancel()
    await sup.shutdown()
    try:
        await asyncio.wait_for(asyncio.shield(run), rt.settings.stop_timeout + 10)
    except TimeoutError:
        log.error("the engine did not stop in time")
    run.cancel()


def _registrar(s: BabysitterSettings, ident: Identity, session: aiohttp.ClientSession) -> Registrar:
    token = s.registry_token.get_secret_value() if s.registry_token else None
    client = (
        RegistryClient(base_url=s.registry, session=session, token=token) if s.registry else None
    )
    record = babysitter_record(
        engine_name=ident.name,
        host=ident.host,
        port=ident.port + 1,
        metadata={
            "engine": s.engine,
            "model_name": ident.model_name,
            "state": "starting",
            "startup_seconds": None,
            "starting_since": None,
        },
    )
    leases = Path(s.log_dir) / f"{safe_name(ident.name)}.leases.json" if s.log_dir else None
    return Registrar(client=client, babysitter=record, leases=LeaseFile(leases))
