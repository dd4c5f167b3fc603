"""The supervisor owns the engine process: preflight, start, readiness, health, restart, drain.

One task runs :meth:`Supervisor.run`: a loop of engine *lives*. A life checks
free memory (:mod:`preflight`), spawns the engine, waits until it is ready
(``/health`` 200 and a models list), then monitors it until it exits, hangs or
is interrupted (``POST /restart``, ``POST /model``, shutdown). The end is
classified (:mod:`classify`) and the restart policy of :mod:`lifecycle`
decides what comes next. The HTTP API only reads the state and sends requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections.abc import Callable, Coroutine
from typing import Any, Literal

import aiohttp

from llmsvc.babysitter import preflight, probes, process, termination
from llmsvc.babysitter.classify import Ending, OomWatch, classify
from llmsvc.babysitter.engines import Identity
from llmsvc.babysitter.lifecycle import (
    PERMANENT,
    ExitRecord,
    Reason,
    RestartBudget,
    State,
    backoff_delay,
)
from llmsvc.babysitter.metrics import BabysitterMetrics
from llmsvc.babysitter.output import EngineOutput, drain_pumps
from llmsvc.babysitter.registration import Registrar, engine_record
from llmsvc.babysitter.settings import BabysitterSettings
from llmsvc.babysitter.swap import Served, SwapRecord, await_release
from llmsvc.babysitter.waiting import Alarm, wait_idle

log = logging.getLogger("llmsvc.babysitter.supervisor")

DRAIN_SETTLE = 0.5  # seconds for routers to hear of a deregistration before the engine stops
GIB = 1024**3

Outcome = Reason | Literal["ready", "exited"]


class Supervisor:
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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._s = settings
        self.served = served
        self.ident = ident
        self._session = session
        self._registrar = registrar
        self._metrics = metrics
        self.output = output
        self._clock = clock
        self._budget = RestartBudget(limit=settings.max_restarts, window=settings.restart_window)
        self._probe_timeout = max(1.0, min(5.0, settings.health_interval))
        self.state = State.STARTING
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.last_exit: ExitRecord | None = None
        self.models: list[dict[str, Any]] = []
        self.preflight: preflight.Preflight | None = None
        self.swap: SwapRecord | None = None
        self._next: Served | None = None  # the swap's target, launched by the next life
        self._previous: Served | None = None  # what a failed swap rolls back to
        self._on_trial = False  # this life runs a swap's new model, not yet ready
        self._started_at: float | None = None
        self._ready_at: float | None = None
        self._failures = 0  # consecutive; reset after --stable-uptime of readiness
        self._stopping = False
        self._requested = False
        self._alarm = Alarm()
        self._resume = asyncio.Event()
        self._resume.set()
        self._drain_lock = asyncio.Lock()
        self.gave_up = False  # restarts stopped with --exit-on-crash-loop: exit 1

    # ---- what the API reads and asks -------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.state is State.READY

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def swapping(self) -> bool:
        return self.swap is not None and self.swap.state == "in-progress"

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def uptime(self) -> float | None:
        if self.proc is None or self._started_at is None:
            return None
        return round(self._clock() - self._started_at, 3)

    def request_restart(self) -> None:
        """Restart the engine now (also out of crash-loop, failed, drained): a fresh budget."""
        self._budget.reset()
        self._failures = 0
        self._requested = True
        self._alarm.ring(Reason.REQUESTED)
        self._resume.set()

    async def drain(self) -> dict[str, Any]:
        """Deregister the engine and wait for its in-flight requests (``--drain-timeout``)."""
        async with self._drain_lock:
            if self.state is State.DRAINED:
                return {"drained": True, "in_flight": 0, "waited_s": 0.0, "timed_out": False}
            self._set_state(State.DRAINING)
            self._resume.clear()  # no relaunch if the engine dies meanwhile
            started = self._clock()
            remaining = await self._withdraw_and_wait()
            if self.state is State.DRAINING:
                self._set_state(State.DRAINED)
            return {
                "drained": True,
                "in_flight": remaining,
                "waited_s": round(self._clock() - started, 3),
                "timed_out": bool(remaining),
            }

    def begin_swap(self, target: Served, *, rollback: bool) -> Coroutine[Any, Any, None]:
        """``POST /model``: record the swap now; the coroutine (the caller owns it) drains the
        engine, then lets the loop stop it and launch ``target``."""
        self.swap = SwapRecord(self.served.model, str(target.model), rollback)
        log.info("swapping model %s -> %s", self.served.model, target.model)
        self._set_state(State.SWAPPING)
        self._resume.clear()  # a crash meanwhile must not relaunch the old model
        return self._swap(target)

    async def _swap(self, target: Served) -> None:
        await self._withdraw_and_wait()
        if self._stopping:
            return
        self._previous, self._next = self.served, target
        self._alarm.ring(Reason.SWAPPED)
        self._resume.set()

    async def shutdown(self) -> None:
        """Drain (deregister the engine, wait for in-flight requests), then stop everything."""
        self._stopping = True
        self._set_state(State.STOPPING)
        if self.proc is not None and self._ready_at is not None:
            await self._withdraw_and_wait()
        await self._registrar.close()
        self._alarm.ring(Reason.STOPPED)
        self._resume.set()

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
            if self._next is not None:
                self.served, self._next = self._next, None
                self._on_trial = self.swapping
                self._relabel()
            record = await self._life(self.served)
            await self._after(record)

    async def _life(self, served: Served) -> ExitRecord:
        self._alarm.clear()
        self._set_state(State.STARTING)
        check = await preflight.run(
            min_free_mem=self._s.min_free_mem,
            min_free_gpu_mem=self._s.min_free_gpu_mem,
            gpus=self._s.gpus,
            probe=self._s.gpu_probe,
        )
        self.preflight = check
        if not check.ok:
            log.error("preflight failed, not launching the engine: %s", check.message())
            return self._record(None, Reason.PREFLIGHT_FAILED, check.message())
        for note in check.notes:
            log.info("preflight: %s", note)
        if self._stopping:  # shut down while preflight ran
            return self._record(None, Reason.STOPPED, "")
        try:
            proc = await process.spawn(served.spec.argv, env=served.spec.env)
        except OSError as exc:
            detail = f"{served.spec.argv[0]}: {exc.strerror or exc}"
            log.error("cannot start the engine: %s", detail)
            return self._record(None, Reason.SPAWN_FAILED, detail)
        return await self._supervise(proc, served)

    async def _supervise(self, proc: asyncio.subprocess.Process, served: Served) -> ExitRecord:
        self.proc, self._started_at, self._ready_at = proc, self._clock(), None
        log.info("engine started: pid %d: %s", proc.pid, " ".join(served.spec.argv))
        oom = OomWatch(proc.pid)
        pumps = self.output.start(proc)
        waiter = asyncio.ensure_future(proc.wait())
        try:
            started = await self._startup(waiter)
            ended = await self._monitor(waiter) if started == "ready" else started
            returncode = proc.returncode
            if returncode is None:
                returncode = await process.stop(proc, timeout=self._s.stop_timeout)
            else:
                await process.stop(proc, timeout=0)  # reap leftovers of its group
            await drain_pumps(pumps)
            uptime = self._clock() - self._started_at
            if ended == "exited":
                ending = Ending(returncode, uptime, list(self.output.tail), oom.kills())
                reason, detail = classify(ending)
            else:
                assert isinstance(ended, Reason)
                reason, detail = ended, ""
            return self._record(returncode, reason, detail)
        finally:
            waiter.cancel()
            for pump in pumps:
                pump.cancel()
            if proc.returncode is None:  # cancelled: never leave an engine behind
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)

    async def _startup(self, waiter: asyncio.Future[int]) -> Outcome:
        assert self._started_at is not None
        deadline = self._started_at + self._s.startup_timeout
        poll = min(0.5, self._s.health_interval)
        while True:
            if await self._probe_ready():
                await self._on_ready()
                return "ready"
            remaining = deadline - self._clock()
            if remaining <= 0:
                log.error("engine not ready after %.1fs; killing it", self._s.startup_timeout)
                return Reason.STARTUP_TIMEOUT
            wake = await self._alarm.pause(waiter, min(poll, remaining))
            if wake == "exited":
                return "exited"
            if wake == "interrupted":
                return self._alarm.reason

    async def _monitor(self, waiter: asyncio.Future[int]) -> Reason | Literal["exited"]:
        failures = 0
        url = self.ident.engine_url() + self.served.spec.health_path
        while True:
            wake = await self._alarm.pause(waiter, self._s.health_interval)
            if wake == "exited":
                return "exited"
            if wake == "interrupted":
                return self._alarm.reason
            ok = await probes.healthy(self._session, url, timeout=self._probe_timeout)
            if self.state not in (State.READY, State.UNHEALTHY):
                continue  # draining, drained, swapping: only the process's exit matters
            failures = 0 if ok else failures + 1
            self._set_state(State.READY if ok else State.UNHEALTHY)
            if failures >= self._s.hung_after:
                log.error("engine failed %d health checks in a row; killing it", failures)
                return Reason.HUNG

    async def _after(self, record: ExitRecord) -> None:
        pgid = self.proc.pid if self.proc else None
        self.last_exit, self.proc, self.models = record, None, []
        self._metrics.exited(record)
        if record.failure:
            termination.write(self._s.termination_log, record)
        if self._ready_at is not None and self._clock() - self._ready_at >= self._s.stable_uptime:
            self._failures = 0  # it ran long enough: backoff starts over
        self._ready_at = None
        if self._stopping:
            return
        level = logging.INFO if not record.failure else logging.WARNING
        log.log(level, "engine ended: %s (code %s, signal %s) %s", record.reason,
                record.code, record.signal, record.detail)  # fmt: skip
        if record.reason is Reason.SWAPPED:
            await self._release(pgid)
            return
        if self.state in (State.DRAINING, State.DRAINED) and record.reason is not Reason.REQUESTED:
            await self._registrar.withdraw_engine()
            self._resume.clear()
            return
        await self._registrar.engine_down()
        if not record.failure:
            return
        if self._on_trial and self._swap_failed(record):
            return
        await self._restart_policy(record)

    async def _restart_policy(self, record: ExitRecord) -> None:
        self._failures += 1
        if record.reason in PERMANENT:
            log.error("the engine cannot start (%s); waiting for POST /restart", record.reason)
            self._set_state(State.FAILED)
            self._give_up(record, "the engine cannot start")
            return
        if not self._budget.record_failure():
            log.error("engine failed more than %d times in %.0fs: crash loop; waiting for POST "
                      "/restart", self._s.max_restarts, self._s.restart_window)  # fmt: skip
            self._set_state(State.CRASH_LOOP)
            self._give_up(record, f"crash loop: {self._failures} failures in a row")
            return
        self._set_state(State.RESTARTING)
        delay = backoff_delay(self._failures, self._s.restart_backoff)
        log.info("restarting the engine in %.2fs", delay)
        await self._alarm.pause(None, delay)

    def _give_up(self, record: ExitRecord, why: str) -> None:
        """Restarts stop: wait for ``POST /restart``, or exit (``--exit-on-crash-loop``)."""
        self._resume.clear()
        if self._s.exit_on_crash_loop:
            termination.write(self._s.termination_log, record, why)
            log.error("%s; exiting (--exit-on-crash-loop)", why)
            self.gave_up = True
            termination.exit_babysitter()

    def _swap_failed(self, record: ExitRecord) -> bool:
        """The swapped-in engine failed: roll back (True) or leave it to the restart policy."""
        assert self.swap is not None
        self._on_trial = False
        why = f"{record.reason}: {record.detail}".rstrip(": ")
        if not self.swap.rollback or self._previous is None:
            self.swap.finish("failed", str(record.reason), why)
            return False
        log.error("model %s failed (%s); rolling back to %s", self.swap.to_model, why,
                  self._previous.model)  # fmt: skip
        self.swap.finish("rolled-back", str(record.reason), why)
        self._next, self._previous = self._previous, None
        return True

    async def _release(self, pgid: int | None) -> None:
        """After a swap stopped the engine: wait for its processes and its GPU memory to go."""
        if pgid is None:
            return
        baseline = self.preflight.gpus if self.preflight else None
        seen = await await_release(
            pgid,
            probe=self._s.gpu_probe,
            gpus=self._s.gpus,
            need_bytes=self._s.min_free_gpu_mem * GIB,
            baseline=baseline,
            group_timeout=max(1.0, self._s.stop_timeout),
            gpu_timeout=self._s.gpu_release_timeout,
        )
        log.info("old engine released: %s", seen)

    # ---- helpers ---------------------------------------------------------------------

    def _record(self, returncode: int | None, reason: Reason, detail: str) -> ExitRecord:
        if returncode is None:
            return ExitRecord(None, None, reason, detail, time.time(), self.served.model)
        return ExitRecord.from_returncode(returncode, reason, detail, self.served.model)

    def _relabel(self) -> None:
        name = self.served.model_name
        self.ident = dataclasses.replace(self.ident, model_name=name)
        self._metrics.relabel(self.ident.label)
        self._metrics.set_state(self.state)

    async def _probe_ready(self) -> bool:
        base = self.ident.engine_url()
        spec, timeout = self.served.spec, self._probe_timeout
        if not await probes.healthy(self._session, base + spec.health_path, timeout=timeout):
            return False
        cards = await probes.models(self._session, base, spec.models_paths, timeout=timeout)
        if cards is None:
            return False
        if not cards and self.ident.model_name:
            cards = [{"id": self.ident.model_name, "object": "model", "owned_by": "llmsvc"}]
        self.models = cards
        return True

    async def _on_ready(self) -> None:
        assert self._started_at is not None
        self._ready_at = self._clock()
        took = self._ready_at - self._started_at
        self._metrics.ready_after(took)
        if self._on_trial and self.swap is not None:
            self._on_trial = False
            self.swap.finish("done")
        if self._stopping or self.state is not State.STARTING:
            return  # draining or swapping: stay out of the registry
        log.info("engine ready after %.2fs serving %s", took, ", ".join(self.model_ids()))
        self._set_state(State.READY)
        registration = engine_record(
            name=self.ident.name,
            host=self.ident.host,
            port=self.ident.port,
            weight=self._s.weight,
            metadata={
                "models": self.model_ids(),
                "engine": self._s.engine,
                "babysitter_url": self.ident.babysitter_url(),
                "health_path": self.served.spec.health_path,
            },
        )
        await self._registrar.publish_engine(registration)

    def model_ids(self) -> list[str]:
        return [str(card["id"]) for card in self.models]

    async def _withdraw_and_wait(self) -> int:
        """Deregister the engine, then wait (``--drain-timeout``) for its in-flight requests."""
        registered = self._registrar.registered().get("engine", False)
        await self._registrar.withdraw_engine()
        deadline = self._clock() + self._s.drain_timeout
        if registered:  # routers hear of it within milliseconds (blocking query)
            await asyncio.sleep(min(DRAIN_SETTLE, self._s.drain_timeout))
        return await wait_idle(
            self._session,
            base_url=self.ident.engine_url(),
            port=self.ident.port,
            running=lambda: self.proc is not None,
            deadline=deadline,
            clock=self._clock,
            probe_timeout=self._probe_timeout,
        )

    def _set_state(self, state: State) -> None:
        if state is not self.state:
            log.info("state %s -> %s", self.state, state)
        self.state = state
        self._metrics.set_state(state)
