"""One client request's bookkeeping, in one place: its attempts at backends and its answer.

The proxy opens an :class:`Exchange` per client request and enters an
:class:`Attempt` for each backend it sends the request to; it only reports
what happened. These two update every store that counts it:

- entering an attempt (``Exchange.attempt``) and leaving it: the backend's
  in-flight count and request count, its response time; from the second
  attempt on, ``llmsvc_router_retries_total``;
- ``Attempt.waiting(deadline)``: the wait for the backend's first byte, which
  ends at ``deadline`` or when the backend is ejected as hung (``Attempt.rescue``:
  the attempt is then ``rescued``); ``Attempt.arrived``: the first byte came (the
  backend's first-byte history, ``latency``), ``Attempt.heard``: some byte came;
  ``Attempt.relaying(close)``: a stream flows to the client, ``Attempt.chunk`` for
  each chunk; an ejection cuts it (``close``) if it sent nothing for
  :data:`STALLED_S`, and the proxy ends it with the in-band error event;
- ``Attempt.first_byte``: the backend's time to first byte and
  ``llmsvc_router_time_to_first_byte_seconds``;
- ``Attempt.failed(kind, status=)``: the backend's errors and
  ``llmsvc_router_upstream_errors_total{kind}`` at once; its passive-health
  and outlier failure (either may take the backend out) once the exchange knows it
  was the backend's fault: when another attempt answers, or the exchange ends (a
  ``Failure.EJECTED`` attempt never: the ejection was counted already).
  ``Attempt.succeeded``: a passive-health success (it ends a probation) and the end
  of the backend's failures in a row; ``Attempt.delivered``: the client has the whole
  answer (a stream's ``[DONE]`` went out): a success, and the request counted with the
  upstream's status at once, so that a client closing right after is no 499;
- ``Exchange.finish``, once per request: ``llmsvc_router_requests_total``, the
  duration histogram and the model's ``/stats``.

Leaving the exchange with an ``ApiError`` finishes it with the error's status,
leaving it cancelled (the client went away) with 499, as nginx logs it.

The poison rule, stated once (``Exchange._failed``): when a request fails the
same way (the same :class:`Failure` kind, for a 5xx the same status) on two
different backends, the fault is the request's, not theirs: the exchange is
``poisoned`` (the proxy tries no further backend) and neither failure counts
against its backend's passive health, so a request that breaks every engine
ejects none of them. Connect errors are exempt: the request never reached the
backend, so they say nothing about it. A backend failing a request another
backend answers still counts, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

from llmsvc.core.errors import ApiError
from llmsvc.router.backends import Backend, BackendPool
from llmsvc.router.ejection import Ejector
from llmsvc.router.metrics import NO_BACKEND, UNKNOWN_MODEL, Failure, RouterMetrics
from llmsvc.router.stats import RouterStats
from llmsvc.router.usage import StreamUsage, Usage

log = logging.getLogger("llmsvc.router.proxy")

CLIENT_CLOSED = 499  # nginx's status for a client that went away first
STALLED_S = 1.0  # a stream this long silent on a backend ejected as hung is cut


@dataclass(frozen=True, slots=True)
class _Failed:
    """A failure not yet counted against its backend's passive health."""

    backend: Backend
    kind: Failure
    status: int | None  # the upstream's status, for a 5xx
    at: float

    def same_as(self, other: _Failed) -> bool:
        """The same failure of the same request on another backend."""
        return (
            self.kind is other.kind
            and self.status == other.status
            and self.backend is not other.backend
            and self.kind is not Failure.CONNECT
        )


class Exchange:
    """One client request: the backends tried for it, and its answer counted once."""

    def __init__(
        self,
        *,
        pool: BackendPool,
        metrics: RouterMetrics,
        stats: RouterStats,
        ejector: Ejector,
        clock: Callable[[], float],
        released: Callable[[Backend], None] | None = None,
    ) -> None:
        self._pool = pool
        self._released = released  # an attempt ended: its backend's slot is free (dispatch)
        self.budget: float | None = None  # seconds an upstream may take (None: --proxy-timeout)
        self.status: int | None = None  # the answer's status, once finished
        self.usage: Usage | StreamUsage | None = None  # the answer's usage (tenants, logs)
        self._ejector = ejector
        self._metrics = metrics
        self._stats = stats
        self._clock = clock
        self.started = clock()
        self.label = UNKNOWN_MODEL  # the model_name label: the model, once some backend lists it
        self.tried: list[Backend] = []  # in the order tried
        self.poisoned = False  # it failed the same way on two backends: try no more
        self._pending: list[_Failed] = []
        self._finished = False

    def route(self, model: str) -> None:
        """The request is for ``model``: label its series with it if some backend lists it."""
        if self._pool.knows(model):
            self.label = model

    def elapsed(self) -> float:
        """Seconds since the request was read."""
        return self._clock() - self.started

    def attempt(self, backend: Backend) -> Attempt:
        """The next try, at ``backend``; enter it for as long as the backend has the request."""
        if self.tried:
            self._metrics.retries.labels(self.label).inc()
        self.tried.append(backend)
        return Attempt(backend, exchange=self, label=self.label, metrics=self._metrics)

    def _failed(self, failure: _Failed) -> None:
        """An attempt failed: held until :meth:`_count_failures`, unless the same failure on
        an earlier backend makes the request poison (then neither is counted)."""
        twins = [f for f in self._pending if f.same_as(failure)]
        if not twins:
            self._pending.append(failure)
            return
        self.poisoned = True
        self._pending = [f for f in self._pending if f not in twins]
        names = ", ".join(f.backend.name for f in [*twins, failure])
        log.info(
            "request failed the same way on backends %s (%s): counted against none",
            names,
            failure.status or failure.kind.value,
            extra={"kind": failure.kind.value},
        )

    def _count_failures(self) -> None:
        """Count the held failures against their backends (some other attempt answered, or
        the exchange is over); a backend may be taken out."""
        pending, self._pending = self._pending, []
        for failure in pending:
            backend = failure.backend
            self._ejector.failed(backend, failure.kind, failure.at)
            if backend.passive.record_failure(failure.at):
                self._pool.health_changed()
                log.warning(
                    "backend %s taken out for %gs after repeated failures",
                    backend.name,
                    backend.passive.fail_timeout,
                    extra={"backend": backend.name, "kind": failure.kind.value},
                )

    def finish(self, status: int, *, ttft: float | None, failed: bool) -> None:
        """Count the answer the client got (the first call only)."""
        if self._finished:
            return
        self._finished = True
        self.status = status
        duration = self.elapsed()
        backend = self.tried[-1].name if self.tried else NO_BACKEND
        self._metrics.count_request(self.label, backend, status, duration)
        if self.label != UNKNOWN_MODEL:
            self._stats.record(self.label, error=failed, duration=duration, ttft=ttft)

    def __enter__(self) -> Exchange:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._count_failures()
        if isinstance(exc, ApiError):
            self.finish(exc.status, ttft=None, failed=True)
        elif isinstance(exc, asyncio.CancelledError):
            self.finish(CLIENT_CLOSED, ttft=None, failed=False)


class Flight(Protocol):
    """What a strategy tracks of an attempt (``scoring.Flight``); both calls idempotent."""

    def first_byte(self) -> None: ...

    def ended(self) -> None: ...


class Attempt:
    """One try of one backend: in flight there from enter to exit."""

    def __init__(
        self, backend: Backend, *, exchange: Exchange, label: str, metrics: RouterMetrics
    ) -> None:
        self.backend = backend
        self._exchange = exchange
        self._label = label
        self._metrics = metrics
        self._clock = exchange._clock
        self._sent = 0.0
        self._timeout: asyncio.Timeout | None = None  # while waiting for the first byte
        self._cut: Callable[[], None] | None = None  # while a stream is relayed
        self._last_chunk = 0.0
        self.rescued = False  # the backend was ejected while this attempt waited (or stalled)
        self.complete = False  # the client has the whole answer (``delivered``)
        self.flight: Flight | None = None  # told its first byte and its end (``scored``)

    def __enter__(self) -> Attempt:
        self.backend.in_flight += 1
        self.backend.stats.requests += 1
        self._sent = self._clock()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.backend.in_flight -= 1
        if self.flight is not None:
            self.flight.ended()
        self.backend.stats.response_time_sum += self._clock() - self._sent
        self.backend.waiting.discard(self)
        self.backend.streams.discard(self)
        released = self._exchange._released
        if released is not None:
            released(self.backend)

    @property
    def budget(self) -> float | None:
        """Seconds the upstream may take (what the queue wait left of --proxy-timeout)."""
        return self._exchange.budget

    def waiting(self, deadline: float) -> _FirstByteWait:
        """``async with``: wait for the first byte until ``deadline`` (loop time) or a
        rescue, whichever comes first; either raises ``TimeoutError`` out of it."""
        return _FirstByteWait(self, deadline)

    def rescue(self) -> None:
        """The backend was ejected (``Backend.rescue_waiting``): stop waiting for the first
        byte now; cut a relayed stream that has sent nothing for :data:`STALLED_S`."""
        if self.rescued:
            return
        if self._timeout is not None:
            self.rescued = True
            self._timeout.reschedule(asyncio.get_running_loop().time())
        elif self._cut is not None and self._clock() - self._last_chunk >= STALLED_S:
            self.rescued = True
            self._cut()

    @contextlib.contextmanager
    def relaying(self, cut: Callable[[], None]) -> Iterator[None]:
        """While a stream is relayed; ``cut`` closes its upstream (an ejection's)."""
        self._cut = cut
        self._last_chunk = self._clock()
        self.backend.streams.add(self)
        try:
            yield
        finally:
            self.backend.streams.discard(self)
            self._cut = None

    def chunk(self) -> None:
        """A chunk of the stream came."""
        self._last_chunk = self.backend.last_seen = self._clock()

    def heard(self) -> None:
        """A byte of the answer came from the backend (it is not hung)."""
        self.backend.last_seen = self._clock()

    def arrived(self, *, stream: bool) -> None:
        """The first byte of a good answer came: the backend's first-byte history."""
        now = self._clock()
        self.backend.last_seen = now
        if self.flight is not None:
            self.flight.first_byte()
        window = self.backend.ttfb_stream if stream else self.backend.ttfb_plain
        window.add(now - self._sent)

    def first_byte(self, ttft: float) -> None:
        """The backend's answer began ``ttft`` seconds after the request was read."""
        self.backend.stats.ttft_sum += ttft
        self.backend.stats.ttft_count += 1
        self._metrics.observe_ttfb(self._label, ttft)
        self._exchange._count_failures()  # an answer: earlier failures were the backends'

    def failed(self, kind: Failure, *, status: int | None = None) -> None:
        """The backend failed the request (once per attempt); ``status``: its 5xx."""
        backend = self.backend
        backend.stats.errors += 1
        self._metrics.upstream_errors.labels(backend.name, kind).inc()
        if kind is not Failure.EJECTED:  # an ejection is counted by itself
            self._exchange._failed(_Failed(backend, kind, status, self._clock()))

    def delivered(self, status: int, ttft: float) -> None:
        """The whole answer (a stream's ``[DONE]``) has gone to the client: the request is
        complete whatever the client does next; counted now, with ``status``."""
        self.complete = True
        self.succeeded()
        self._exchange.finish(status, ttft=ttft, failed=False)

    def succeeded(self) -> None:
        """The backend answered in full."""
        self.backend.passive.record_success(self._clock())
        self.backend.outlier.consecutive = 0


class _FirstByteWait:
    """``Attempt.waiting``: an ``asyncio.timeout_at`` the attempt's rescue brings forward."""

    __slots__ = ("_attempt", "_deadline", "_timeout")

    def __init__(self, attempt: Attempt, deadline: float) -> None:
        self._attempt = attempt
        self._deadline = deadline
        self._timeout = asyncio.timeout_at(deadline)

    async def __aenter__(self) -> Self:
        await self._timeout.__aenter__()
        attempt = self._attempt
        attempt._timeout = self._timeout
        attempt.backend.waiting.add(attempt)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        attempt = self._attempt
        attempt.backend.waiting.discard(attempt)
        attempt._timeout = None
        await self._timeout.__aexit__(exc_type, exc, traceback)
