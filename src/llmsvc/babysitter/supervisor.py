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
from pathlib import Path
from typing import Any

import aiohttp

from llmsvc.babysitter import api, concurrency, probes, termination
from llmsvc.babysitter.engines import Identity
from llmsvc.babysitter.life import EngineRunner
from llmsvc.babysitter.lifecycle import ExitRecord, Reason, RestartPolicy, State
from llmsvc.babysitter.metrics import BabysitterMetrics
from llmsvc.babysitter.output import EngineOutput
from llmsvc.babysitter.registration import Registrar, engine_record
from llmsvc.babysitter.settings import BabysitterSettings
from llmsvc.babysitter.standby import (
    GpuLock,
    IdleClock,
    default_lock_dir,
    post_engine,
    scrape_load,
)
from llmsvc.babysitter.swap import Served, Swap, await_release
from llmsvc.babysitter.termination import GiveUp
from llmsvc.babysitter.waiting import DRAIN_SETTLE, Alarm, Drainer

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
        self._idle = (
            IdleClock(settings.idle_timeout, clock=clock) if settings.idle_timeout > 0 else None
        )
        gpu_lock = None
        if self._idle is not None and settings.gpus:
            directory = Path(settings.gpu_lock_dir) if settings.gpu_lock_dir else None
            gpu_lock = GpuLock(directory or default_lock_dir(), settings.gpus, owner=ident.name)
        self._runner = EngineRunner(
            settings=settings,
            session=session,
            alarm=self._alarm,
            output=output,
            hooks=self,
            probe_timeout=probe_timeout,
            gpu_lock=gpu_lock,
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
        self._between_lives = asyncio.Event()  # set while no life runs (no engine process)
        self._between_lives.set()
        self.standby_since: float | None = None  # Unix time it went to standby
        self.wakes = 0
        self.wake_seconds: float | None = None  # the last POST /wake to ready, measured
        self._wake_began: float | None = None  # monotonic, while waking
        self._wake_task: asyncio.Task[None] | None = None

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
            standby=self._standby_status(),
        )

    def _standby_status(self) -> api.Standby | None:
        if self._idle is None:
            return None
        return api.Standby(
            mode=self._s.standby,
            idle_timeout=self._s.idle_timeout,
            since=self.standby_since,
            wakes=self.wakes,
            last_wake_seconds=self.wake_seconds,
        )

    def request_restart(self) -> None:
        """Restart the engine now (also out of crash-loop, failed, drained): a fresh budget."""
        self._policy.reset()
        self._requested = True
        self._alarm.ring(Reason.REQUESTED)
        self._resume.set()

    def wake(self) -> bool:
        """``POST /wake``: start the engine in standby again; False when it is not in standby
        (already running, starting or waking: nothing to do)."""
        if self.state is not State.STANDBY or self._stopping:
            return False
        log.info("waking the engine (--standby %s)", self._s.standby)
        self._wake_began = self._clock()
        self._set_state(State.WAKING)
        self.starting_since = round(self._wall(), 3)
        self._publish_self()
        if self._s.standby == "stop":  # stopped: the loop launches it (a normal start)
            self._resume.set()
        else:  # asleep
            self._wake_task = asyncio.get_running_loop().create_task(
                self._wake_up(), name="wake-up"
            )
        return True

    async def _wake_up(self) -> None:
        """Wake a sleeping engine: the GPU lock, ``POST /wake_up``, then its health."""
        base = self.ident.engine_url()
        deadline = self._clock() + self._s.startup_timeout
        if not await self._runner.wait_for_gpus():
            return  # interrupted: shutdown, restart, swap
        code, body = await post_engine(
            self._session, base + "/wake_up", timeout=self._s.startup_timeout
        )
        ok = code == 200
        url = base + self.served.spec.health_path
        while ok and not await probes.healthy(self._session, url, timeout=self._s.health_timeout):
            if self._clock() >= deadline or self.state is not State.WAKING:
                ok = False
                break
            await asyncio.sleep(min(0.2, self._s.health_interval))
        if self.state is not State.WAKING or self._stopping:
            return
        if not ok:
            log.error("the engine did not wake up (POST /wake_up: %s %s); restarting it",
                      code, body.strip()[:200])  # fmt: skip
            self.request_restart()
            return
        self._woke()
        log.info("engine awake after %.2fs", self.wake_seconds or 0.0)
        self._set_state(State.READY)
        await self._registrar.engine_awake()

    def _woke(self) -> None:
        """A wake is over: measure it, count it, and start the idle clock again."""
        if self._wake_began is not None:
            self.wake_seconds = round(self._clock() - self._wake_began, 3)
            self._metrics.woke(self.wake_seconds)
        self._wake_began = None
        self.wakes += 1
        self.standby_since = None
        if self._idle is not None:
            self._idle.reset()

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

    async def stop_engine(self) -> api.Stopped:
        """``POST /stop``: drain, then stop the engine and wait until its processes and its
        GPU memory are gone (as a swap waits), so that something else may use the GPU. The
        state stays ``drained`` (``pid`` null) until ``POST /restart``."""
        drained = await self.drain()
        engine = self._runner.engine
        pgid = engine.proc.pid if engine is not None else None
        if not self._between_lives.is_set():
            log.info("stopping the engine (POST /stop)")
            self._alarm.ring(Reason.STOPPED)
            await self._between_lives.wait()
        released = await self._release(pgid)
        log.info("engine stopped: %s", released)
        return api.Stopped(**drained.model_dump(), stopped=pgid is not None, released=released)

    @property
    def engine_pid(self) -> int | None:
        """The engine process's pid (its process group's id), None while none runs."""
        engine = self._runner.engine
        return engine.proc.pid if engine is not None else None

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
        starting = (State.STARTING, State.WAKING)
        if self._stopping or self.state not in starting:
            self._publish_self()
            return  # draining or swapping: stay out of the registry
        slots = await self._max_concurrency()
        if self._stopping or self.state not in starting:
            self._publish_self()
            return
        log.info("engine ready after %.2fs serving %s", took, ", ".join(self.model_ids()))
        if self.state is State.WAKING:
            self._woke()
        elif self._idle is not None:
            self._idle.reset()
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
        metadata: dict[str, Any] = {
            "model_name": self.ident.model_name,
            "state": str(self.state),
            "startup_seconds": self.startup_seconds,
            "starting_since": self.starting_since,
        }
        if self.wake_seconds is not None:
            metadata["wake_seconds"] = self.wake_seconds
        return metadata

    def _publish_self(self) -> None:
        self._registrar.update_babysitter(self.record_metadata())

    def health_checked(self, ok: bool) -> bool:
        if self.state not in (State.READY, State.UNHEALTHY):
            return False
        self._set_state(State.READY if ok else State.UNHEALTHY)
        return True

    async def idle_tick(self) -> Reason | None:
        """At each passed health check: has the engine been idle for ``--idle-timeout``?
        Then take it out of rotation (record ``standby``), look once more after routers
        heard of it, and stop it (:data:`Reason.STANDBY` ends the life) or put it to sleep."""
        idle = self._idle
        if idle is None or self.state is not State.READY:
            return None
        base, timeout = self.ident.engine_url(), self._s.health_timeout
        if not idle.observe(await scrape_load(self._session, base, timeout=timeout)):
            return None
        log.info("engine idle for %.1fs: going to standby (%s)", idle.idle_for(), self._s.standby)
        await self._registrar.engine_standby()  # routers stop sending it requests
        await asyncio.sleep(DRAIN_SETTLE)
        load = await scrape_load(self._session, base, timeout=timeout)
        if self.state is not State.READY or self._stopping or not idle.observe(load):
            log.info("a request arrived meanwhile: staying up")
            await self._back_in_rotation()
            return None
        if self._s.standby == "stop":
            self._enter_standby()
            return Reason.STANDBY
        code, body = await post_engine(self._session, base + "/sleep?level=1", timeout=30)
        if code != 200:
            log.warning("the engine refused to sleep (%s %s): staying up", code, body[:200])
            await self._back_in_rotation()
            return None
        self._enter_standby()
        if self._runner.gpu_lock is not None:
            self._runner.gpu_lock.release()  # asleep: another model may use the GPU
        return None

    async def _back_in_rotation(self) -> None:
        if self._idle is not None:
            self._idle.reset()
        if self.state is State.READY and not self._stopping:
            await self._registrar.engine_awake()

    def _enter_standby(self) -> None:
        self.standby_since = round(self._wall(), 3)
        self._set_state(State.STANDBY)

    # ---- the loop of lives -----------------------------------------------------------

    async def run(self) -> None:
        while not self._stopping:
            await self._resume.wait()
            if self._stopping:
                return
            waking = self.state is State.WAKING
            if self.last_exit is not None and not waking:
                self.restarts += 1
                requested = self._requested and self.last_exit.reason is not Reason.SWAPPED
                self._metrics.restarted(Reason.REQUESTED if requested else self.last_exit.reason)
            self._requested = False
            staged = self._swap.take_staged()
            if staged is not None:
                self.served = staged
                self._relabel()
            if not waking:
                self.starting_since = round(self._wall(), 3)
                self._set_state(State.STARTING)
            self._publish_self()  # a new start, even when the state was already starting
            self._between_lives.clear()
            try:
                record = await self._runner.live(self.served, self.ident)
                await self._after(record)
            finally:
                self._between_lives.set()

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
        if record.reason is Reason.STANDBY:
            log.info("engine stopped: standby until POST /wake")
            if self.state is State.STANDBY and not self._requested:
                self._resume.clear()  # until POST /wake (or /restart)
            return  # waking, restarting, draining: what was asked meanwhile goes on
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

    async def _release(self, pgid: int | None) -> str:
        """After a swap or ``POST /stop`` stopped the engine: wait for its processes and its
        GPU memory to go; what was seen."""
        if pgid is None:
            return "no engine process ran"
        check = self._runner.preflight
        seen = await await_release(
            pgid,
            probe=self._s.gpu_probe,
            gpus=self._s.gpus,
            need_bytes=(self._s.min_free_gpu_mem or 0.0) * GIB,
            baseline=check.gpus if check else None,
            group_timeout=max(1.0, self._s.stop_timeout),
            gpu_timeout=self._s.gpu_release_timeout,
        )
        log.info("old engine released: %s", seen)
        return seen

    # ---- helpers ---------------------------------------------------------------------

    def _relabel(self) -> None:
        name = self.served.model_name
        self.ident = dataclasses.replace(self.ident, model_name=name)
        self._metrics.relabel(self.ident.label)
        self._metrics.set_state(self.state)

    def _set_state(self, state: State) -> None:
        if self.state is State.STANDBY and state not in (State.STANDBY, State.WAKING):
            self.standby_since = None  # left standby another way (drain, restart, shutdown)
        if state is not self.state:
            log.info("state %s -> %s", self.state, state)
        self.state = state
        self._metrics.set_state(state)
        self._metrics.set_standby(state is State.STANDBY)
        if state not in (State.STARTING, State.WAKING):
            self.starting_since = None
        self._publish_self()
