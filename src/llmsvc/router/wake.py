"""Waking standby engines for a model's requests (bare-metal scale to and from zero).

A babysitter started with ``--idle-timeout`` stops its idle engine or puts it to sleep
(``--standby stop|sleep``): its record's ``metadata.state`` says ``standby`` and its engine
record's status ``standby``, so the model stays known and a request for it is held
(``hold``). Someone has to start an engine again, and only the router sees the request:
:class:`Waker` asks :func:`llmsvc.autoscale.wake.to_wake` whenever a request is held and at
every pool change while some are held, and when it says N it sends ``POST <sitter>/wake``
(``Authorization: Bearer <--registry-token>``, the token the babysitter's ``/drain`` takes
too) to N standby babysitters of the model. There is no polling loop.

Nothing else asks for a second engine on bare metal, so the waker also grows the model's
awake engines with its demand (``--wake-target`` requests per engine, ``target``): a
request of a model that has a standby babysitter going in flight or joining the model's
line asks again (:meth:`Waker.grew`; for a model without one that is a set lookup), and
``to_wake`` wakes more once the demand (in flight, queued and held here) passes
``target`` per ready or waking engine. A failed wake of a second engine is retried at
the next such request, not by a timer.

Which one: the one whose last measured wake (else start) was the shortest, then by name.
The held requests wait for exactly that time, so the fastest engine to come back is the
right one (one asleep in GPU memory before one stopped); the name makes the choice the
same on every router replica, so that replicas seeing the same records wake the same
babysitter, not one each. One whose wake failed in the last ``memory`` seconds (the hold
timeout) is tried after the others.

A wake sent is followed in the registry's records (at every pool change, held requests
or not): until they show that babysitter out of standby (waking, starting) and then its
engine eligible here (a babysitter says ``ready`` a refresh and a health check before
its engine is routable) it counts as on its way, so that the next refresh, which may
still show ``standby``, or the moment between ``ready`` and a routable engine, does not
wake a second one. A wake fails when its ``POST`` does (no connection, a timeout, a 4xx or
5xx: logged, counted in ``llmsvc_router_wakes_total{model_name,outcome}``), when the
babysitter is back in standby after waking, or when the registry still shows it in
standby after ``memory`` seconds; the next standby babysitter is then woken at once, and
when none is left the failed ones are asked again after :data:`FAILED_RETRY_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import aiohttp

from llmsvc.autoscale.wake import to_wake
from llmsvc.core.records import ServiceRecord
from llmsvc.router.backends import BackendPool

log = logging.getLogger("llmsvc.router.wake")

WAKE_TIMEOUT_S = 5.0  # one POST /wake: a babysitter answers at once (202), not after the wake
FAILED_RETRY_S = 2.0  # a babysitter whose wake failed is asked again after this long
STANDBY = "standby"
ON_THE_WAY = frozenset({"waking", "starting"})  # an engine of the model is coming up
READY = "ready"  # up: its engine's record follows (a refresh and a health check later)


class Outcome(StrEnum):
    """The ``outcome`` label of ``llmsvc_router_wakes_total``."""

    WOKEN = "woken"  # 202: it was in standby and is waking now
    AWAKE = "awake"  # 200: it was already running or starting
    REFUSED = "refused"  # a 4xx (a wrong or missing token, an old babysitter without /wake)
    FAILED = "failed"  # a 5xx (its engine could not be woken)
    UNREACHABLE = "unreachable"  # no connection, or no answer within WAKE_TIMEOUT_S


def outcome_of(status: int) -> Outcome:
    """What a ``POST /wake`` answer's status means."""
    if status == 202:
        return Outcome.WOKEN
    if 200 <= status < 300:
        return Outcome.AWAKE
    return Outcome.REFUSED if 400 <= status < 500 else Outcome.FAILED


def wake_cost(record: ServiceRecord) -> float:
    """Seconds its engine took to come back last time: the last wake, else the last full
    start, else unknown (inf)."""
    for key in ("wake_seconds", "startup_seconds"):
        value = record.metadata.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return float(value)
    return math.inf


def state_of(record: ServiceRecord) -> str | None:
    state = record.metadata.get("state")
    return state if isinstance(state, str) else None


@dataclass(slots=True)
class _Wake:
    """A wake this router sent, until the registry shows how it went."""

    model: str
    sent: float  # when the POST went (the waker's clock)
    seen: bool = False  # the registry has shown the babysitter waking or starting since
    up: float | None = None  # when its record first showed it up (its engine may lag)


class Waker:
    """Wakes standby babysitters of a model whose requests are held or whose demand grew."""

    def __init__(
        self,
        pool: BackendPool,
        *,
        held: Callable[[str], int],
        token: str | None,
        memory: float,
        count: Callable[[str, Outcome], None],
        demand: Callable[[str], int] | None = None,
        target: float = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``held(model)``: its held requests; ``demand(model)``: its requests in flight,
        queued and held; ``target``: requests per awake engine before another is woken (0,
        or no ``demand``: only the first, for held requests)."""
        self._pool = pool
        self._held = held
        self._demand = demand
        self._target = target if demand is not None else 0
        self._standby_version = -1  # the pool version _has_standby was filled at
        self._has_standby: dict[str, bool] = {}  # model -> a sitter of it is in standby
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._memory = max(memory, WAKE_TIMEOUT_S)
        self._count = count
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._wakes: dict[str, _Wake] = {}  # sitter -> its wake, until the registry says
        self._failed: dict[str, float] = {}  # sitter -> when its last wake failed
        self._tasks: set[asyncio.Task[None]] = set()
        self._retry: dict[str, asyncio.TimerHandle] = {}  # model -> its FAILED_RETRY_S timer
        pool.listen(self._observe)  # every refresh, held requests or not: how wakes went

    def attach(self, session: aiohttp.ClientSession) -> None:
        """Start waking, with ``session`` (the registry watch's lifetime)."""
        self._session = session

    async def close(self) -> None:
        """Stop waking; wakes in flight are cancelled."""
        self._session = None
        for timer in self._retry.values():
            timer.cancel()
        self._retry.clear()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def consider(self, model: str) -> None:
        """A request is held for ``model`` or the pool changed while some are: wake one
        standby babysitter of it if :func:`to_wake` says so. Never raises (the request
        path and the pool's listeners call it)."""
        try:
            self._consider(model)
        except Exception:  # a bug here must not fail a held request
            log.exception("deciding a wake for model %s failed", model)

    def grew(self, model: str) -> None:
        """A request of ``model`` went in flight or joined its line: wake another standby
        babysitter of it if its demand now asks for one (``target``). Cheap when the model
        has none in standby (the usual case): a dict lookup, the answer kept per model
        until the pool's records change (a refresh is what changes a babysitter's state)."""
        if self._target <= 0 or self._session is None:
            return
        pool = self._pool
        if pool.version != self._standby_version:
            self._standby_version = pool.version
            self._has_standby.clear()
        has = self._has_standby.get(model)
        if has is None:
            has = self._has_standby[model] = any(
                state_of(r) == STANDBY for r in pool.sitters(model)
            )
        if has:
            self.consider(model)

    def _consider(self, model: str) -> None:
        if self._session is None:
            return
        held = self._held(model)
        demand = self._demand(model) if self._demand is not None and self._target > 0 else 0
        if held <= 0 and demand <= 0:
            return
        now = self._clock()
        self._observe()
        sitters = self._pool.sitters(model)
        wakes = self._wakes
        on_the_way = sum(1 for r in sitters if r.name in wakes or state_of(r) in ON_THE_WAY)
        standby = [
            r
            for r in sitters
            if state_of(r) == STANDBY
            and r.name not in wakes
            and now - self._failed.get(r.name, -math.inf) >= FAILED_RETRY_S
        ]
        ready = len(self._pool.eligible(model, now))
        wanted = to_wake(
            held=held,
            ready=ready,
            waking=on_the_way,
            standby=len(standby),
            demand=demand,
            target=self._target,
        )
        if not wanted:
            if held > 0 and not standby and not on_the_way and not ready:
                self._retry_later(model, sitters, now)
            return
        loop = asyncio.get_running_loop()
        for sitter in sorted(standby, key=lambda r: self._order(r, now))[:wanted]:
            wakes[sitter.name] = _Wake(model, now)
            task = loop.create_task(self._wake(model, sitter))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _order(self, record: ServiceRecord, now: float) -> tuple[bool, float, str]:
        failed_lately = now - self._failed.get(record.name, -math.inf) < self._memory
        return (failed_lately, wake_cost(record), record.name)

    def _observe(self) -> None:
        """Follow the wakes sent in the registry's records: one seen waking (or starting)
        and then up is done; one seen waking that is back in standby, or still in standby
        after the memory, failed (its babysitter is tried after the others)."""
        if not self._wakes:
            return  # the usual case: nothing sent, nothing to follow
        now = self._clock()
        for name, wake in list(self._wakes.items()):
            record = next((r for r in self._pool.sitters(wake.model) if r.name == name), None)
            state = state_of(record) if record is not None else None
            if state in ON_THE_WAY:
                wake.seen = True
                continue
            if state == STANDBY and not wake.seen and now - wake.sent < self._memory:
                continue  # the registry does not show it yet
            if state == READY and record is not None:
                if wake.up is None:
                    wake.up = now
                if now - wake.up < self._memory and not self._engine_ready(record, wake, now):
                    continue  # up by its record, its engine not yet routable here: on its way
            del self._wakes[name]
            if state == STANDBY:
                self._failed[name] = now
                log.warning(
                    "babysitter %s of model %s is in standby again after its wake",
                    name,
                    wake.model,
                    extra={"model": wake.model, "babysitter": name},
                )
            else:
                self._failed.pop(name, None)  # up (or gone): done
        for name in [n for n, at in self._failed.items() if now - at >= 2 * self._memory]:
            del self._failed[name]

    def _engine_ready(self, record: ServiceRecord, wake: _Wake, now: float) -> bool:
        """Whether the babysitter's engine (``metadata.engine_service``) is eligible in
        the pool; True when the record does not say which engine is its own. Its record
        says ``ready`` before the engine's record is healthy in this router's view (a
        refresh and a health check later): until then the model may still have nothing
        ready, and a held request would wake a second babysitter for nothing."""
        engine = record.metadata.get("engine_service")
        if not isinstance(engine, str):
            return True
        return any(b.name == engine for b in self._pool.eligible(wake.model, now))

    def _retry_later(self, model: str, sitters: list[ServiceRecord], now: float) -> None:
        """Every standby babysitter of ``model`` failed its wake lately: ask again once the
        first of them may be retried (nothing else would call :meth:`consider`)."""
        failed = [
            self._failed[r.name]
            for r in sitters
            if state_of(r) == STANDBY and r.name in self._failed
        ]
        if not failed or model in self._retry:
            return
        delay = max(0.0, min(failed) + FAILED_RETRY_S - now)

        def again() -> None:
            self._retry.pop(model, None)
            self.consider(model)

        self._retry[model] = asyncio.get_running_loop().call_later(delay, again)

    async def _wake(self, model: str, sitter: ServiceRecord) -> None:
        session = self._session
        if session is None:
            return
        url = sitter.origin() + "/wake"
        started = self._clock()
        try:
            async with session.post(
                url, headers=self._headers, timeout=aiohttp.ClientTimeout(total=WAKE_TIMEOUT_S)
            ) as resp:
                await resp.read()
                outcome = outcome_of(resp.status)
                detail = f"status {resp.status}"
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            outcome, detail = Outcome.UNREACHABLE, type(exc).__name__
        self._count(model, outcome)
        if outcome in (Outcome.WOKEN, Outcome.AWAKE):
            log.info(
                "woke babysitter %s for model %s (%s, %.3f s)",
                sitter.name,
                model,
                outcome.value,
                self._clock() - started,
                extra={"model": model, "babysitter": sitter.name},
            )
            return
        log.warning(
            "waking babysitter %s for model %s failed: %s",
            sitter.name,
            model,
            detail,
            extra={"model": model, "babysitter": sitter.name, "url": url},
        )
        self._wakes.pop(sitter.name, None)
        self._failed[sitter.name] = self._clock()
        self.consider(model)  # the next standby babysitter, if any
