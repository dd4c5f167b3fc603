"""The supervisor owns the engine process: start, readiness, health, restart, drain.

One task runs :meth:`Supervisor.run`: a loop of engine *lives*. A life spawns
the engine, waits until it is ready (``/health`` 200 and a models list), then
monitors it until it exits, hangs or is interrupted (``POST /restart``,
shutdown). After a life the restart policy of :mod:`lifecycle` decides what
comes next. The HTTP API only reads the state and sends requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any, Literal

import aiohttp

from llmsvc.babysitter import probes, process
from llmsvc.babysitter.engines import EngineSpec, Identity
from llmsvc.babysitter.lifecycle import (
    ExitRecord,
    Reason,
    RestartBudget,
    State,
    backoff_delay,
)
from llmsvc.babysitter.metrics import BabysitterMetrics
from llmsvc.babysitter.registration import Registrar, engine_record
from llmsvc.babysitter.settings import BabysitterSettings

log = logging.getLogger("llmsvc.babysitter.supervisor")

HUNG_AFTER = 3  # consecutive failed health checks of a live engine
DRAIN_GRACE = 2.0  # seconds to wait when the engine exports no in-flight gauges
DRAIN_POLL = 0.1

Wake = Literal["exited", "interrupted", "timeout"]


class Supervisor:
    def __init__(
        self,
        *,
        settings: BabysitterSettings,
        spec: EngineSpec,
        ident: Identity,
        session: aiohttp.ClientSession,
        registrar: Registrar,
        metrics: BabysitterMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._s = settings
        self._spec = spec
        self._ident = ident
        self._session = session
        self._registrar = registrar
        self._metrics = metrics
        self._clock = clock
        self._budget = RestartBudget(limit=settings.max_restarts, window=settings.restart_window)
        self._probe_timeout = max(1.0, min(5.0, settings.health_interval))
        self.state = State.STARTING
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.last_exit: ExitRecord | None = None
        self.models: list[dict[str, Any]] = []
        self._started_at: float | None = None
        self._failures = 0  # consecutive, reset when an engine gets ready
        self._stopping = False
        self._requested = False
        self._interrupt = asyncio.Event()
        self._interrupt_reason = Reason.REQUESTED
        self._resume = asyncio.Event()
        self._resume.set()
        self._drain_lock = asyncio.Lock()

    # ---- what the API reads and asks -------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.state is State.READY

    @property
    def stopping(self) -> bool:
        return self._stopping

    def uptime(self) -> float | None:
        if self.proc is None or self._started_at is None:
            return None
        return round(self._clock() - self._started_at, 3)

    def request_restart(self) -> None:
        """Restart the engine now (also out of ``failed`` and ``drained``): a fresh budget."""
        self._budget.reset()
        self._failures = 0
        self._requested = True
        self._wake(Reason.REQUESTED)
        self._resume.set()

    async def drain(self) -> dict[str, Any]:
        """Deregister the engine and wait for its in-flight requests (``--drain-timeout``)."""
        async with self._drain_lock:
            if self.state is State.DRAINED:
                return {"drained": True, "in_flight": 0, "waited_s": 0.0, "timed_out": False}
            self._set_state(State.DRAINING)
            self._resume.clear()  # no relaunch if the engine dies meanwhile
            await self._registrar.withdraw_engine()
            started = self._clock()
            remaining = await self._wait_idle(started + self._s.drain_timeout)
            if self.state is State.DRAINING:
                self._set_state(State.DRAINED)
            return {
                "drained": True,
                "in_flight": remaining,
                "waited_s": round(self._clock() - started, 3),
                "timed_out": bool(remaining),
            }

    async def shutdown(self) -> None:
        """Deregister both records, then end the current life (the engine is stopped)."""
        self._stopping = True
        self._set_state(State.STOPPING)
        await self._registrar.close()
        self._wake(Reason.STOPPED)
        self._resume.set()

    # ---- the loop of lives -----------------------------------------------------------

    async def run(self) -> None:
        while not self._stopping:
            await self._resume.wait()
            if self._stopping:
                return
            if self.last_exit is not None:
                self.restarts += 1
                requested = self._requested or self.last_exit.reason is Reason.REQUESTED
                self._metrics.restarted(Reason.REQUESTED if requested else self.last_exit.reason)
            self._requested = False
            record = await self._life()
            await self._after(record)

    async def _life(self) -> ExitRecord:
        self._interrupt.clear()
        self._set_state(State.STARTING)
        output = process.open_log(self._s.log_dir, self._ident.name)
        try:
            try:
                proc = await process.spawn(self._spec.argv, env=self._spec.env, output=output)
            except OSError as exc:
                detail = f"{self._spec.argv[0]}: {exc.strerror or exc}"
                log.error("cannot start the engine: %s", detail)
                return ExitRecord(None, None, Reason.SPAWN_FAILED, detail, time.time())
            return await self._supervise(proc)
        finally:
            if output is not None:
                output.close()

    async def _supervise(self, proc: asyncio.subprocess.Process) -> ExitRecord:
        self.proc, self._started_at = proc, self._clock()
        log.info("engine started: pid %d: %s", proc.pid, " ".join(self._spec.argv))
        waiter = asyncio.ensure_future(proc.wait())
        try:
            reason = await self._startup(waiter)
            if reason is None:
                reason = await self._monitor(waiter)
            returncode = proc.returncode
            if returncode is None:
                returncode = await process.stop(proc, timeout=self._s.stop_timeout)
            else:
                await process.stop(proc, timeout=0)  # reap leftovers of its group
            return ExitRecord.from_returncode(returncode, reason)
        finally:
            waiter.cancel()
            if proc.returncode is None:  # cancelled: never leave an engine behind
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)

    async def _startup(self, waiter: asyncio.Future[int]) -> Reason | None:
        """None once ready; else why the life ends."""
        assert self._started_at is not None
        deadline = self._started_at + self._s.startup_timeout
        poll = min(0.5, self._s.health_interval)
        while True:
            if await self._probe_ready():
                await self._on_ready()
                return None
            remaining = deadline - self._clock()
            if remaining <= 0:
                log.error("engine not ready after %.1fs; killing it", self._s.startup_timeout)
                return Reason.STARTUP_TIMEOUT
            wake = await self._pause(waiter, min(poll, remaining))
            if wake == "exited":
                return Reason.CRASHED
            if wake == "interrupted":
                return self._interrupt_reason

    async def _monitor(self, waiter: asyncio.Future[int]) -> Reason:
        failures = 0
        url = self._ident.engine_url() + self._spec.health_path
        while True:
            wake = await self._pause(waiter, self._s.health_interval)
            if wake == "exited":
                return Reason.CRASHED
            if wake == "interrupted":
                return self._interrupt_reason
            ok = await probes.healthy(self._session, url, timeout=self._probe_timeout)
            if self.state not in (State.READY, State.UNHEALTHY):
                continue  # draining or drained: only the process's exit matters
            failures = 0 if ok else failures + 1
            self._set_state(State.READY if ok else State.UNHEALTHY)
            if failures >= HUNG_AFTER:
                log.error("engine failed %d health checks in a row; killing it", failures)
                return Reason.HUNG

    async def _after(self, record: ExitRecord) -> None:
        self.last_exit, self.proc, self.models = record, None, []
        self._metrics.exited(record)
        if self._stopping:
            return
        level = logging.INFO if record.reason is Reason.REQUESTED else logging.WARNING
        log.log(
            level,
            "engine ended (%s): code %s, signal %s %s",
            record.reason,
            record.code,
            record.signal,
            record.detail,
        )
        if self.state in (State.DRAINING, State.DRAINED) and record.reason is not Reason.REQUESTED:
            await self._registrar.withdraw_engine()
            self._resume.clear()
            return
        await self._registrar.engine_down()
        if record.reason is Reason.REQUESTED:
            return
        self._failures += 1
        if not self._budget.record_failure():
            log.error(
                "engine failed more than %d times in %.0fs; giving up until POST /restart",
                self._s.max_restarts,
                self._s.restart_window,
            )
            self._set_state(State.FAILED)
            self._resume.clear()
            return
        self._set_state(State.RESTARTING)
        delay = backoff_delay(self._failures, self._s.restart_backoff)
        log.info("restarting the engine in %.2fs", delay)
        await self._pause(None, delay)

    # ---- helpers ---------------------------------------------------------------------

    async def _probe_ready(self) -> bool:
        base = self._ident.engine_url()
        timeout = self._probe_timeout
        if not await probes.healthy(self._session, base + self._spec.health_path, timeout=timeout):
            return False
        cards = await probes.models(self._session, base, self._spec.models_paths, timeout=timeout)
        if cards is None:
            return False
        if not cards and self._ident.model_name:
            cards = [{"id": self._ident.model_name, "object": "model", "owned_by": "llmsvc"}]
        self.models = cards
        return True

    async def _on_ready(self) -> None:
        assert self._started_at is not None
        took = self._clock() - self._started_at
        self._failures = 0
        self._metrics.ready_after(took)
        if self._stopping or self.state is not State.STARTING:
            return  # draining: stay out of the registry
        log.info("engine ready after %.2fs serving %s", took, ", ".join(self.model_ids()))
        self._set_state(State.READY)
        registration = engine_record(
            name=self._ident.name,
            host=self._ident.host,
            port=self._ident.port,
            weight=self._s.weight,
            metadata={
                "models": self.model_ids(),
                "engine": self._s.engine,
                "babysitter_url": self._ident.babysitter_url(),
                "health_path": self._spec.health_path,
            },
        )
        await self._registrar.publish_engine(registration)

    def model_ids(self) -> list[str]:
        return [str(card["id"]) for card in self.models]

    async def _wait_idle(self, deadline: float) -> int:
        """Poll the engine's in-flight gauges until 0 or ``deadline``; what is left."""
        base = self._ident.engine_url()
        while self.proc is not None:
            count = await probes.in_flight(self._session, base, timeout=self._probe_timeout)
            left = deadline - self._clock()
            if count is None:  # no gauges: a short fixed grace
                await asyncio.sleep(max(0.0, min(DRAIN_GRACE, left)))
                return 0
            if count == 0 or left <= 0:
                return count
            await asyncio.sleep(min(DRAIN_POLL, left))
        return 0

    async def _pause(self, waiter: asyncio.Future[int] | None, timeout: float) -> Wake:
        """Sleep ``timeout`` s unless the process exits or someone interrupts."""
        if waiter is not None and waiter.done():
            return "exited"
        if self._interrupt.is_set():
            return "interrupted"
        interrupted = asyncio.ensure_future(self._interrupt.wait())
        waits: set[asyncio.Future[Any]] = {interrupted}
        if waiter is not None:
            waits.add(waiter)
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            interrupted.cancel()
        if waiter is not None and waiter.done():
            return "exited"
        return "interrupted" if self._interrupt.is_set() else "timeout"

    def _wake(self, reason: Reason) -> None:
        self._interrupt_reason = reason
        self._interrupt.set()

    def _set_state(self, state: State) -> None:
        if state is not self.state:
            log.info("state %s -> %s", self.state, state)
        self.state = state
        self._metrics.set_state(state)
