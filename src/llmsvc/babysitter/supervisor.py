"""The supervisor owns the engine's state machine: lives, restarts, drain, swap, shutdown.

One task runs :meth:`Supervisor.run`: a loop of engine *lives*. A life
(:mod:`life`) checks free memory, spawns the engine, waits until it is ready and
monitors it until it exits, hangs or is interrupted (``POST /restart``, ``POST
/model``, shutdown). After each life the supervisor decides what comes next:
the restart policy of :mod:`lifecycle`, the course of a model swap
(:class:`~llmsvc.babysitter.swap.Swap`), or giving up
(:class:`~llmsvc.babysitter.termination.GiveUp`). The HTTP API reads
:meth:`Supervisor.snapshot` and sends requests.

Every state change is also published in the babysitter's own registry record
(:meth:`Supervisor.record_metadata`): the state, when the current start began and
how long the last one took, which routers use to tell a held request how long a
cold start should still take.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp

from llmsvc.babysitter import api, concurrency, termination
from llmsvc.babysitter.engines import Identity
from llmsvc.babysitter.life import EngineRunner
from llmsvc.babysitter.lifecycle import ExitRecord, Reason, RestartPolicy, State
from llmsvc.babysitter.metrics import BabysitterMetrics
from llmsvc.babysitter.output import EngineOutput
from llmsvc.babysitter.registration import Registrar, engine_record
from llmsvc.babysitter.settings import BabysitterSettings
from llmsvc.babysitter.swap import Served, Swap, await_release
from llmsvc.babysitter.termination import GiveUp
from llmsvc.babysitter.waiting import Alarm, Drainer

log = logging.getLogger("llmsvc.babysitter.supervisor")

GIB = 1024**3


class Supervisor:
    """The engine's state machine (:class:`State`); the API's one handle on the engine."""

    def __init__(
        self,
        *,
        settings: BabysitterSettings,
        served: Served,
        ident: Identity,
        session: aiohttp.ClientSession,
        registrar: Registrar,
        metrics: BabysitterMetrics,
        output: EngineOutput,
        give_up: GiveUp,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._s = settings
        self._session = session
        self._wall = wall
        self.served = served
        self.ident = ident
        self._registrar = registrar
        self._metrics = metrics
        self._output = output
        self._give_up = give_up
        self._clock = clock
        probe_timeout = settings.health_timeout
        self._alarm = Alarm()
        self._runner = EngineRunner(
            settings=settings,
            session=session,
            alarm=self._alarm,
            output=output,
            hooks=self,
            probe_timeout=probe_timeout,
            clock=clock,
        )
        self._drainer = Drainer(
            registrar=registrar,
            session=session,
            drain_timeout=settings.drain_timeout,
            probe_timeout=probe_timeout,
            running=lambda: self._runner.engine is not None,
            clock=clock,
        )
        self._policy = RestartPolicy(
            limit=settings.max_restarts,
            window=settings.restart_window,
            backoff=settings.restart_backoff,
            stable_uptime=settings.stable_uptime,
        )
        self._swap = Swap()
        self.state = State.STARTING
        self.startup_seconds: float | None = None  # the last launch-to-ready, measured
        self.starting_since: float | None = None  # Unix time the start under way began
        self.restarts = 0
        self.last_exit: ExitRecord | None = None
        self._stopping = False
        self._requested = False  # the life under way ends by POST /restart
        self._resume = asyncio.Event()  # cleared: no new life until a request sets it
        self._resume.set()
        self._drain_lock = asyncio.Lock()

    # ---- what the API reads and asks -------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.state is State.READY

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def swapping(self) -> bool:
        return self._swap.in_progress

    @property
    def models(self) -> list[dict[str, Any]]:
        """The engine's model cards while it runs (once it was ready)."""
        engine = self._runner.engine
        return engine.models if engine is not None else []

    def model_ids(self) -> list[str]:
        return [str(card["id"]) for card in self.models]

    def snapshot(self) -> api.Status:
        """Everything ``GET /status`` shows, at this moment."""
        engine, exit_, check = self._runner.engine, self.last_exit, self._runner.preflight
        swap, log_file = self._swap.record, self._output.path
        registered = {"engine": False, "babysitter": False, **self._registrar.registered()}
        return api.Status(
            state=self.state,
            pid=engine.proc.pid if engine else None,
            restarts=self.restarts,
            uptime_s=self._runner.uptime(),
            model=self.served.model,
            model_name=self.ident.model_name,
            models=self.model_ids(),
            engine=self._s.engine,
            name=self.ident.name,
            url=self.ident.advertised_url(),
            last_exit=api.LastExit.model_validate(exit_.as_json()) if exit_ else None,
            consecutive_failures=self._policy.failures,
            stderr_tail=list(self._output.tail),
            preflight=api.Preflight.model_validate(check.as_json()) if check else None,
            swap=api.Swap.model_validate(swap.as_json()) if swap else None,
            log_file=str(log_file) if log_file else None,
            registered=api.Registered(**registered),
            registration=api.Registration(**self._registrar.registration()),
            router=self._s.router,
            registry=self._s.registry,
        )

    def request_restart(self) -> None:
        """Restart the engine now (also out of crash-loop, failed, drained): a fresh budget."""
        self._policy.reset()
        self._requested = True
        self._alarm.ring(Reason.REQUESTED)
        self._resume.set()

    async def drain(self) -> api.Drained:
        """Deregister the engine and wait for its in-flight requests (``--drain-timeout``)."""
        async with self._drain_lock:
            if self.state is State.DRAINED:
                return api.Drained(drained=True, in_flight=0, waited_s=0.0, timed_out=False)
            self._set_state(State.DRAINING)
            self._resume.clear()  # no relaunch if the engine dies meanwhile
            started = self._clock()
            remaining = await self._drainer.withdraw_and_wait(self.ident)
            if self.state is State.DRAINING:
                self._set_state(State.DRAINED)
            return api.Drained(
                drained=True,
                in_flight=remaining,
                waited_s=round(self._clock() - started, 3),
                timed_out=bool(remaining),
            )

    def begin_swap(self, target: Served, *, rollback: bool) -> Coroutine[Any, Any, None]:
        """``POST /model``: record the swap now; the coroutine (the caller owns it) drains the
        engine, then lets the loop stop it and launch ``target``."""
        self._swap.begin(self.served, target, rollback=rollback)
        log.info("swapping model %s -> %s", self.served.model, target.model)
        self._set_state(State.SWAPPING)
        self._resume.clear()  # a crash meanwhile must not relaunch the old model
        return self._swap_when_drained(target)

    async def _swap_when_drained(self, target: Served) -> None:
        await self._drainer.withdraw_and_wait(self.ident)
        if self._stopping:
            return
        self._swap.stage(self.served, target)
        self._alarm.ring(Reason.SWAPPED)
        self._resume.set()

    async def shutdown(self) -> None:
        """Drain (deregister the engine, wait for in-flight requests), then stop everything."""
        self._stopping = True
        self._set_state(State.STOPPING)
        engine = self._runner.engine
        if engine is not None and engine.ready_at is not None:
            await self._drainer.withdraw_and_wait(self.ident)
        await self._registrar.close()
        self._alarm.ring(Reason.STOPPED)
        self._resume.set()

    # ---- what a life tells (LifeHooks) -----------------------------------------------

    async def engine_ready(self, took: float) -> None:
        self._metrics.ready_after(took)
        self._swap.passed()
        self.startup_seconds = round(took, 3)
        if self._stopping or self.state is not State.STARTING:
            self._publish_self()
            return  # draining or swapping: stay out of the registry
        slots = await self._max_concurrency()
        if self._stopping or self.state is not State.STARTING:
            self._publish_self()
            return
        log.info("engine ready after %.2fs serving %s", took, ", ".join(self.model_ids()))
        self._set_state(State.READY)
        metadata: dict[str, Any] = {
            "models": self.model_ids(),
            "engine": self._s.engine,
            "babysitter_url": self.ident.babysitter_url(),
            "health_path": self.served.spec.health_path,
        }
        if slots is not None:
            metadata["max_concurrency"] = slots
        registration = engine_record(
            name=self.ident.name,
            host=self.ident.host,
            port=self.ident.port,
            weight=self._s.weight,
            metadata=metadata,
        )
        await self._registrar.publish_engine(registration)

    async def _max_concurrency(self) -> int | None:
        """The engine's slots: from its command line, else (llama.cpp) its ``/props``."""
        spec = self.served.spec
        if spec.max_concurrency is not None or not spec.asks_props:
            return spec.max_concurrency
        slots = await concurrency.slots_from_props(
            self._session, self.ident.engine_url(), timeout=self._s.health_timeout
        )
        if slots is None:
            log.info("the engine's /props gave no total_slots: no max_concurrency advertised")
        return slots

    def record_metadata(self) -> dict[str, Any]:
        """What the babysitter's own record says of the engine, now."""
        return {
            "model_name": self.ident.model_name,
            "state": str(self.state),
            "startup_seconds": self.startup_seconds,
            "starting_since": self.starting_since,
        }

    def _publish_self(self) -> None:
        self._registrar.update_babysitter(self.record_metadata())

    def health_checked(self, ok: bool) -> bool:
        if self.state not in (State.READY, State.UNHEALTHY):
            return False
        self._set_state(State.READY if ok else State.UNHEALTHY)
        return True

    # ---- the loop of lives -----------------------------------------------------------

    async def run(self) -> None:
        while not self._stopping:
            await self._resume.wait()
            if self._stopping:
                return
            if self.last_exit is not None:
                self.restarts += 1
                requested = self._requested and self.last_exit.reason is not Reason.SWAPPED
                self._metrics.restarted(Reason.REQUESTED if requested else self.last_exit.reason)
            self._requested = False
            staged = self._swap.take_staged()
            if staged is not None:
                self.served = staged
                self._relabel()
            self.starting_since = round(self._wall(), 3)
            self._set_state(State.STARTING)
            self._publish_self()  # a new start, even when the state was already starting
            record = await self._runner.live(self.served, self.ident)
            await self._after(record)

    async def _after(self, record: ExitRecord) -> None:
        engine = self._runner.take_ended()
        self.last_exit = record
        self._metrics.exited(record)
        if record.failure:
            termination.write(self._s.termination_log, record)
        ready_at = engine.ready_at if engine is not None else None
        self._policy.ended(self._clock() - ready_at if ready_at is not None else None)
        if self._stopping:
            return
        level = logging.INFO if not record.failure else logging.WARNING
        log.log(level, "engine ended: %s (code %s, signal %s) %s", record.reason,
                record.code, record.signal, record.detail)  # fmt: skip
        if record.reason is Reason.SWAPPED:
            await self._release(engine.proc.pid if engine is not None else None)
            return
        if self.state in (State.DRAINING, State.DRAINED) and record.reason is not Reason.REQUESTED:
            await self._registrar.withdraw_engine()
            self._resume.clear()
            return
        await self._registrar.engine_down()
        if record.failure and not self._swap.failed(record):  # a failed swap rolls back
            await self._restart_or_stop(record)

    async def _restart_or_stop(self, record: ExitRecord) -> None:
        verdict = self._policy.verdict(record)
        if verdict.state is State.RESTARTING:
            self._set_state(State.RESTARTING)
            log.info("restarting the engine in %.2fs", verdict.delay)
            await self._alarm.pause(None, verdict.delay)
            return
        if verdict.state is State.FAILED:
            log.error("the engine cannot start (%s); waiting for POST /restart", record.reason)
        else:
            log.error("engine failed more than %d times in %.0fs: crash loop; waiting for POST "
                      "/restart", self._s.max_restarts, self._s.restart_window)  # fmt: skip
        self._set_state(verdict.state)
        self._resume.clear()  # restarts stop: wait for POST /restart, or exit
        if self._s.exit_on_crash_loop:
            termination.write(self._s.termination_log, record, verdict.why)
            log.error("%s; exiting (--exit-on-crash-loop)", verdict.why)
            self._give_up.give_up(verdict.why)

    async def _release(self, pgid: int | None) -> None:
        """After a swap stopped the engine: wait for its processes and its GPU memory to go."""
        if pgid is None:
            return
        check = self._runner.preflight
        seen = await await_release(
            pgid,
            probe=self._s.gpu_probe,
            gpus=self._s.gpus,
            need_bytes=self._s.min_free_gpu_mem * GIB,
            baseline=check.gpus if check else None,
            group_timeout=max(1.0, self._s.stop_timeout),
            gpu_timeout=self._s.gpu_release_timeout,
        )
        log.info("old engine released: %s", seen)

    # ---- helpers ---------------------------------------------------------------------

    def _relabel(self) -> None:
        name = self.served.model_name
        self.ident = dataclasses.replace(self.ident, model_name=name)
        self._metrics.relabel(self.ident.label)
        self._metrics.set_state(self.state)

    def _set_state(self, state: State) -> None:
        if state is not self.state:
            log.info("state %s -> %s", self.state, state)
        self.state = state
        self._metrics.set_state(state)
        if state is not State.STARTING:
            self.starting_since = None
        self._publish_self()
