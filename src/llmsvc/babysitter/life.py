"""One engine life: preflight, spawn, wait until ready, monitor until it ends.

:meth:`EngineRunner.live` runs one life and returns how it ended, an
:class:`ExitRecord` (classified by :mod:`classify` when the engine exited on
its own). What comes next (restart, roll back, give up) is the supervisor's;
a life tells it of readiness and health through :class:`LifeHooks`, and it
interrupts a life through the shared :class:`Alarm`. The process of the life
under way is :attr:`EngineRunner.engine`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import aiohttp

from llmsvc.babysitter import preflight, probes, process
from llmsvc.babysitter.classify import Ending, OomWatch, classify
from llmsvc.babysitter.engines import Identity
from llmsvc.babysitter.lifecycle import ExitRecord, Reason
from llmsvc.babysitter.output import EngineOutput, drain_pumps
from llmsvc.babysitter.settings import BabysitterSettings
from llmsvc.babysitter.standby import GpuLock
from llmsvc.babysitter.swap import Served
from llmsvc.babysitter.waiting import Alarm

log = logging.getLogger("llmsvc.babysitter.supervisor")  # a life logs as the supervisor did

Outcome = Reason | Literal["ready", "exited"]

HUNG_STOP_TIMEOUT = 2.0
"""Seconds a hung engine gets between SIGTERM (with SIGCONT) and SIGKILL."""


@dataclass
class Engine:
    """The engine process of the life under way: what ``/status`` shows, what a drain waits for."""

    proc: asyncio.subprocess.Process
    started_at: float  # monotonic
    ready_at: float | None = None
    models: list[dict[str, Any]] = field(default_factory=list)  # its model cards, once ready


class LifeHooks(Protocol):
    """What a life tells the supervisor, and asks it."""

    @property
    def stopping(self) -> bool: ...

    async def engine_ready(self, took: float) -> None:
        """The engine answers its health check and lists its models, ``took`` s after spawn."""

    def health_checked(self, ok: bool) -> bool:
        """A health check's result; False when it does not count (draining, swapping)."""

    async def idle_tick(self) -> Reason | None:
        """After a passed health check: :data:`Reason.STANDBY` when the engine has been idle
        long enough to be stopped (``--standby stop``), else None."""


class EngineRunner:
    """Runs the engine's lives, one at a time."""

    def __init__(
        self,
        *,
        settings: BabysitterSettings,
        session: aiohttp.ClientSession,
        alarm: Alarm,
        output: EngineOutput,
        hooks: LifeHooks,
        probe_timeout: float,
        gpu_lock: GpuLock | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._s = settings
        self.gpu_lock = gpu_lock
        self._session = session
        self._alarm = alarm
        self._output = output
        self._hooks = hooks
        self._probe_timeout = probe_timeout
        self._clock = clock
        self.engine: Engine | None = None  # until the supervisor takes the ended life's
        self.preflight: preflight.Preflight | None = None  # the latest check

    def uptime(self) -> float | None:
        if self.engine is None:
            return None
        return round(self._clock() - self.engine.started_at, 3)

    def take_ended(self) -> Engine | None:
        """The ended life's process, cleared: no engine runs until the next life."""
        engine, self.engine = self.engine, None
        return engine

    async def live(self, served: Served, ident: Identity) -> ExitRecord:
        """Preflight, spawn, supervise: how this life of ``served`` ended."""
        self._alarm.clear()
        check = await preflight.run(
            min_free_mem=self._s.min_free_mem,
            min_free_gpu_mem=self._s.min_free_gpu_mem,
            gpus=self._s.gpus,
            probe=self._s.gpu_probe,
            fraction=preflight.gpu_fraction(self._s.engine, served.spec.argv),
            enabled=self._s.preflight,
        )
        self.preflight = check
        if not check.ok:
            log.error("preflight failed, not launching the engine: %s", check.message())
            return _record(served, None, Reason.PREFLIGHT_FAILED, check.message())
        for note in check.notes:
            log.info("preflight: %s", note)
        if self._hooks.stopping:  # shut down while preflight ran
            return _record(served, None, Reason.STOPPED, "")
        if not await self.wait_for_gpus():
            reason = Reason.STOPPED if self._hooks.stopping else self._alarm.reason
            return _record(served, None, reason, "interrupted while waiting for the GPU")
        try:
            try:
                proc = await process.spawn(served.spec.argv, env=served.spec.env)
            except OSError as exc:
                detail = f"{served.spec.argv[0]}: {exc.strerror or exc}"
                log.error("cannot start the engine: %s", detail)
                return _record(served, None, Reason.SPAWN_FAILED, detail)
            return await self._supervise(proc, served, ident)
        finally:
            if self.gpu_lock is not None:
                self.gpu_lock.release()  # the engine's processes are gone

    async def wait_for_gpus(self) -> bool:
        """Take the GPU lock (:class:`GpuLock`), waiting while another engine holds it;
        False when interrupted (shutdown, POST /restart, /model) first."""
        lock = self.gpu_lock
        if lock is None or lock.try_acquire():
            return True
        log.info("waiting for %s to be free before starting the engine", lock.holder())
        while not lock.try_acquire():
            if self._hooks.stopping or await self._alarm.pause(None, 0.1) == "interrupted":
                return False
        log.info("GPU %s free: starting", ",".join(lock.gpus))
        return True

    async def _supervise(
        self, proc: asyncio.subprocess.Process, served: Served, ident: Identity
    ) -> ExitRecord:
        engine = self.engine = Engine(proc, self._clock())
        log.info("engine started: pid %d: %s", proc.pid, " ".join(served.spec.argv))
        oom = OomWatch(proc.pid)
        pumps = self._output.start(proc)
        waiter = asyncio.ensure_future(proc.wait())
        try:
            started = await self._startup(engine, waiter, served, ident)
            ended = await self._monitor(waiter, served, ident) if started == "ready" else started
            returncode = proc.returncode
            if returncode is None:
                returncode = await self._stop(proc, hung=ended is Reason.HUNG)
            else:
                await process.stop(proc, timeout=0)  # reap leftovers of its group
            await drain_pumps(pumps)
            if isinstance(ended, Reason):
                return _record(served, returncode, ended, "")
            uptime = self._clock() - engine.started_at
            ending = Ending(returncode, uptime, list(self._output.tail), oom.kills())
            return _record(served, returncode, *classify(ending))
        finally:
            waiter.cancel()
            for pump in pumps:
                pump.cancel()
            if proc.returncode is None:  # cancelled: never leave an engine behind
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)

    async def _stop(self, proc: asyncio.subprocess.Process, *, hung: bool) -> int:
        """Stop the engine: ``--stop-timeout`` for a graceful stop, at most
        :data:`HUNG_STOP_TIMEOUT` for a hung engine (it finishes no request anyway)."""
        if not hung:
            return await process.stop(proc, timeout=self._s.stop_timeout)
        timeout = min(self._s.stop_timeout, HUNG_STOP_TIMEOUT)
        return await process.stop(proc, timeout=timeout, resume=True)

    async def _startup(
        self, engine: Engine, waiter: asyncio.Future[int], served: Served, ident: Identity
    ) -> Outcome:
        deadline = engine.started_at + self._s.startup_timeout
        poll = min(0.5, self._s.health_interval)
        while True:
            cards = await self._probe_ready(served, ident)
            if cards is not None:
                engine.models, engine.ready_at = cards, self._clock()
                await self._hooks.engine_ready(engine.ready_at - engine.started_at)
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

    async def _monitor(
        self, waiter: asyncio.Future[int], served: Served, ident: Identity
    ) -> Reason | Literal["exited"]:
        failures = 0
        url = ident.engine_url() + served.spec.health_path
        interval = self._s.health_interval
        pause = interval
        while True:
            wake = await self._alarm.pause(waiter, pause)
            if wake == "exited":
                return "exited"
            if wake == "interrupted":
                return self._alarm.reason
            began = self._clock()
            ok = await probes.healthy(self._session, url, timeout=self._health_timeout(served))
            # Checks start every interval: a check that timed out is followed by the next
            # at once, so that --hung-after failures take about that many intervals.
            pause = max(0.0, interval - (self._clock() - began))
            if not self._hooks.health_checked(ok):
                continue  # draining, drained, swapping: only the process's exit matters
            failures = 0 if ok else failures + 1
            if failures >= self._s.hung_after:
                log.error("engine failed %d health checks in a row; killing it", failures)
                return Reason.HUNG
            if ok and (standby := await self._hooks.idle_tick()) is not None:
                return standby

    def _health_timeout(self, served: Served) -> float:
        return max(self._probe_timeout, served.spec.health_timeout_floor)

    async def _probe_ready(self, served: Served, ident: Identity) -> list[dict[str, Any]] | None:
        """The engine's model cards once it is ready; None while it is not."""
        base = ident.engine_url()
        spec, timeout = served.spec, self._probe_timeout
        health = base + spec.health_path
        if not await probes.healthy(self._session, health, timeout=self._health_timeout(served)):
            return None
        cards = await probes.models(self._session, base, spec.models_paths, timeout=timeout)
        if cards is None:
            return None
        if not cards and ident.model_name:
            cards = [{"id": ident.model_name, "object": "model", "owned_by": "llmsvc"}]
        return cards


def _record(served: Served, returncode: int | None, reason: Reason, detail: str) -> ExitRecord:
    if returncode is None:
        return ExitRecord(None, None, reason, detail, time.time(), served.model)
    return ExitRecord.from_returncode(returncode, reason, detail, served.model)
