"""Holding a request for a known model that has no eligible backend yet.

A model is known while some record names it (``BackendPool.knows``), even when
none of its backends can take a request: its engine is loading behind a
babysitter, it is in standby, every backend is down or taken out for a moment.
Instead of a 503 at once such a request waits up to ``--hold-timeout`` seconds
for a backend to become eligible. It hears of one by the pool's change event
(``BackendPool.listen``: every registry refresh and health change), and for the
one change no event announces, a passive take-out or outlier ejection ending by
itself, by a timer at that moment: there is no polling loop.

A held stream gets its answer's headers at once (``200 text/event-stream``)
and an SSE comment line every ``--hold-feedback-interval`` seconds, ``: waiting
for <model>: N ahead, about S s``, so that clients and proxies see progress;
comment lines are ignored by every SSE client (the ``openai`` one included).
The estimate (:func:`sitter_estimate`, :func:`service_estimate`) is the last measured
start of what is coming up minus the time it has run: a babysitter's engine start
(``startup_seconds`` since ``starting_since``), its wake from standby (``wake_seconds``
while ``waking``), or on Kubernetes an InferenceService's cold start (the operator's
``llmsvc.io/cold-start-seconds`` and ``scaling-since`` annotations, which the registry puts
in the ``inference-service`` record as ``startup_seconds`` and ``starting_since``).
A request held for a model whose engines are all in standby also wakes one (``wake``):
:meth:`Holds.on_held` tells the waker of every hold and of every pool change while some
are held.
Once those headers are out, whatever ends the request early is an in-band error
event (:func:`in_band`), never a second status line.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from aiohttp import web

from llmsvc.core.errors import ApiError, ModelNotFound, ServiceUnavailable, echoed
from llmsvc.router.backends import Backend, BackendPool
from llmsvc.router.candidates import Eligible
from llmsvc.router.demand import DemandCounter
from llmsvc.router.inband import in_band

HOLD_RETRY_AFTER_S = 5  # Retry-After of a hold that timed out without an estimate


class NoHealthyBackend(ServiceUnavailable):
    """503 ``no_healthy_backend``: the seed's message, and when to try again."""

    def __init__(self, model: str, retry_after: float = HOLD_RETRY_AFTER_S) -> None:
        super().__init__(
            f"No healthy services available for model '{echoed(model)}'",
            code="no_healthy_backend",
            headers={"Retry-After": str(max(1, round(retry_after)))},
        )


def _seconds(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


def _left(took: float, since: float | None, now: float) -> float:
    """What is left of ``took`` seconds begun at ``since`` (all of it if not begun), >= 1."""
    return max(1.0, took - (now - since) if since is not None else took)


def sitter_estimate(metadata: Mapping[str, Any], now: float) -> tuple[bool, float] | None:
    """A babysitter record's guess at the seconds until its engine is ready, and whether it
    is under way (True) or only possible (a standby engine nobody has woken yet).

    ``waking``: its last wake (``wake_seconds``; before the first, its last start) minus the
    time the wake has run; ``standby``: a whole wake (or start); any other state with a start
    under way (``starting_since``): its last start minus the time that one has run."""
    state = metadata.get("state")
    since = _seconds(metadata.get("starting_since"))
    startup = _seconds(metadata.get("startup_seconds"))
    if state in ("waking", "standby"):
        took = _seconds(metadata.get("wake_seconds"))
        took = took if took is not None else startup
        if took is None:
            return None
        if state == "standby":
            return False, max(1.0, took)
        return True, _left(took, since, now)
    if startup is None or since is None:
        return None
    return True, _left(startup, since, now)


def service_estimate(metadata: Mapping[str, Any], now: float) -> tuple[bool, float] | None:
    """An ``inference-service`` record's guess (Kubernetes, no ready pod): the last cold
    start (``startup_seconds``) minus the time the scale-up from zero has run
    (``starting_since``), under way; the whole cold start when no scale-up has begun."""
    startup = _seconds(metadata.get("startup_seconds"))
    if startup is None:
        return None
    since = _seconds(metadata.get("starting_since"))
    return since is not None, _left(startup, since, now)


class Holds:
    """The held requests of every model, woken by the pool's changes."""

    def __init__(
        self,
        pool: BackendPool,
        demand: DemandCounter,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._pool = pool
        self._demand = demand
        self._clock = clock
        self._wall = wall
        self._changed: asyncio.Event | None = None  # created by the first hold
        self._held: dict[str, list[object]] = {}  # model -> its held requests, oldest first
        self._closing: Callable[[str], ApiError] | None = None
        self._on_held: list[Callable[[str], None]] = []
        pool.listen(self._pool_changed)

    def on_held(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(model)`` when a request is held for ``model``, and for every
        model with held requests after each pool change (the waker)."""
        self._on_held.append(listener)

    def count(self, model: str) -> int:
        """Requests held for ``model`` now."""
        return len(self._held.get(model, ()))

    def _pool_changed(self) -> None:
        self._wake()
        for model in list(self._held):
            for listener in self._on_held:
                listener(model)

    def _wake(self) -> None:
        changed = self._changed
        if changed is not None:
            self._changed = None
            changed.set()

    def close(self, make_error: Callable[[str], ApiError]) -> None:
        """Drain: every held request (and any held later) ends with ``make_error(model)``."""
        self._closing = make_error
        self._wake()

    def ahead(self, model: str, token: object) -> int:
        """Requests held for ``model`` before ``token``."""
        held = self._held.get(model, [])
        return held.index(token) if token in held else 0

    def estimate(self, model: str) -> float | None:
        """Seconds until an engine of ``model`` is likely ready: the soonest of the starts
        and wakes under way, else of the standby engines' wakes (one is being woken);
        None when no record of it says."""
        now = self._wall()
        pool = self._pool
        guesses = [
            guess
            for guess in (
                *(sitter_estimate(r.metadata, now) for r in pool.sitters(model)),
                *(service_estimate(r.metadata, now) for r in pool.inference_services(model)),
            )
            if guess is not None
        ]
        under_way = [seconds for going, seconds in guesses if going]
        return min(under_way or [seconds for _, seconds in guesses], default=None)

    @contextlib.contextmanager
    def holding(self, model: str) -> Iterator[object]:
        """While a request is held for ``model``: counted as held, with a place in line."""
        token = object()
        self._held.setdefault(model, []).append(token)
        self._demand.add(self._demand.held, model, 1)
        for listener in self._on_held:
            listener(model)
        try:
            yield token
        finally:
            held = self._held[model]
            held.remove(token)
            if not held:
                del self._held[model]
            self._demand.add(self._demand.held, model, -1)

    async def until_eligible(self, model: str, timeout: float) -> Eligible[Backend]:
        """The model's eligible backends once there are some; :class:`NoHealthyBackend`
        after ``timeout`` seconds (at once for 0)."""
        deadline = self._clock() + timeout
        while True:
            if self._closing is not None:
                raise self._closing(model)
            now = self._clock()
            eligible = self._pool.eligible(model, now)
            if eligible:
                return eligible
            if not self._pool.knows(model):
                raise ModelNotFound(model)  # its last record went while it was held
            if now >= deadline:
                raise NoHealthyBackend(model, self.estimate(model) or HOLD_RETRY_AFTER_S)
            if self._changed is None:
                self._changed = asyncio.Event()
            wake = min(deadline, self._pool.next_return(model, now))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, wake - now)):
                    await self._changed.wait()


class Feedback:
    """A held (or queued) stream's early answer: its headers, then comment lines."""

    def __init__(self, request: web.Request, model: str, interval: float) -> None:
        self.request = request
        self.model = model
        self.interval = interval
        self.response: web.StreamResponse | None = None
        self._task: asyncio.Task[None] | None = None
        self.line: Callable[[], str] = lambda: f": waiting for {model}"

    async def start(self, headers: dict[str, str]) -> web.StreamResponse:
        """Send the headers (once) and start the comment lines."""
        if self.response is None:
            response = web.StreamResponse(
                status=200,
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
                | headers,
            )
            await response.prepare(self.request)
            self.response = response
        if self._task is None and self.interval > 0:
            self._task = asyncio.create_task(self._comments(self.response))
        return self.response

    async def _comments(self, response: web.StreamResponse) -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                await response.write(self.line().encode() + b"\n\n")
                await asyncio.sleep(self.interval)

    def stop(self) -> None:
        """No more comment lines (the upstream's stream follows, or the end)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def fail(self, error: ApiError) -> web.StreamResponse:
        """End the stream with ``error`` in band, no ``[DONE]``."""
        self.stop()
        response = self.response
        assert response is not None
        with contextlib.suppress(ConnectionError):
            await response.write(in_band(error))
            await response.write_eof()
        return response
