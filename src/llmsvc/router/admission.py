"""A request's way from the router's door to a backend: admission, hold, queue, pick.

``Proxy.handle`` reads the body and knows the model; then, in this order
(docs/flow-control.md):

1. :meth:`FlowControl.admit`: a draining router answers 503 ``draining``; the
   priority class (``X-Llmsvc-Priority``, 400 ``invalid_priority``).
2. :meth:`FlowControl.backend`, once per try: a model with no eligible backend is
   held (``hold``) up to ``--hold-timeout``; with slots, a request that finds none
   free waits in its model's line (``dispatch``) up to ``--queue-timeout``; then the
   strategy picks among the backends with room.

Every rejection is counted with its reason (``metrics.Rejection``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from aiohttp import web

from llmsvc.core.errors import ApiError
from llmsvc.core.wire import RoutingInfo
from llmsvc.router.attempt import Exchange
from llmsvc.router.backends import Backend, BackendPool
from llmsvc.router.balancing import Strategy
from llmsvc.router.candidates import Eligible, untried
from llmsvc.router.demand import DemandCounter, ModelDemand
from llmsvc.router.dispatch import Dispatcher, Draining
from llmsvc.router.flowqueue import Ticket
from llmsvc.router.hold import Feedback, Holds
from llmsvc.router.priority import LABELS, PRIORITY_HEADER, Priority, parse_priority
from llmsvc.router.settings import RouterSettings

DRAIN_MARGIN_S = 1.0  # those still waiting are answered this long before the drain's end


@dataclass(slots=True)
class Admitted:
    """One admitted request's flow-control state."""

    model: str
    priority: Priority
    tenant: str
    stream: bool
    queue_wait: float = 0.0
    hold: float = 0.0
    feedback: Feedback | None = None

    @property
    def response(self) -> web.StreamResponse | None:
        """A held stream's response, its headers out: the rest of the answer goes there."""
        return self.feedback.response if self.feedback is not None else None


class FlowControl:
    """The router's holds, lines and demand, and the drain that ends them."""

    def __init__(
        self,
        *,
        pool: BackendPool,
        strategy: Strategy,
        settings: RouterSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._strategy = strategy
        self._clock = clock
        self._hold_timeout = settings.hold_timeout
        self._feedback_interval = settings.hold_feedback_interval
        self._proxy_timeout = settings.proxy_timeout
        self.demand = DemandCounter()
        self.holds = Holds(pool, self.demand, clock=clock)
        self.dispatcher = Dispatcher(pool=pool, settings=settings, clock=clock)
        self.draining = False

    def admit(self, request: web.Request, info: RoutingInfo) -> Admitted:
        """The request's class (and later its tenant); 503 ``draining`` once stopping."""
        if self.draining:
            raise Draining()
        priority = parse_priority(request.headers.get(PRIORITY_HEADER))
        return Admitted(model=info.model, priority=priority, tenant="anonymous", stream=info.stream)

    async def backend(
        self,
        request: web.Request,
        admitted: Admitted,
        exchange: Exchange,
        key: str | None,
    ) -> Backend | None:
        """The backend for the next try; None when no untried one is left. A queue wait
        counts toward ``--proxy-timeout``: the exchange's ``budget`` is what is left."""
        backend = await self._backend(request, admitted, exchange.tried, key)
        if admitted.queue_wait:
            exchange.budget = max(0.001, self._proxy_timeout - admitted.queue_wait)
        return backend

    async def _backend(
        self, request: web.Request, admitted: Admitted, tried: list[Backend], key: str | None
    ) -> Backend | None:
        model = admitted.model
        now = self._clock()
        eligible = self._pool.eligible(model, now)
        if not eligible:
            if tried:
                return None
            eligible = await self._hold(request, admitted)
            now = self._clock()
        if not eligible.offers(tried):
            return None
        dispatcher = self.dispatcher
        if not dispatcher.active():
            return self._strategy.pick(model, eligible, key, tried=tried)
        if not tried and not (dispatcher.may_pass(model) and dispatcher.free(model, now) > 0):
            admitted.queue_wait += await self._queue(admitted)
            now = self._clock()
            eligible = self._pool.eligible(model, now)
            if not eligible:
                return None
        left = untried(eligible, tried)
        full = dispatcher.full(left, now)
        excluded = [*tried, *full] if full and len(full) < len(left) else tried
        return self._strategy.pick(model, eligible, key, tried=excluded)

    async def _hold(self, request: web.Request, admitted: Admitted) -> Eligible[Backend]:
        holds = self.holds
        started = self._clock()
        model = admitted.model
        with holds.holding(model) as token:
            if admitted.stream and self._hold_timeout > 0:
                feedback = admitted.feedback or Feedback(request, model, self._feedback_interval)
                admitted.feedback = feedback

                def line() -> str:
                    text = f": waiting for {model}: {holds.ahead(model, token)} ahead"
                    estimate = holds.estimate(model)
                    return text if estimate is None else f"{text}, about {estimate:.0f} s"

                feedback.line = line
                await feedback.start({})
            try:
                return await holds.until_eligible(model, self._hold_timeout)
            finally:
                admitted.hold += self._clock() - started

    async def _queue(self, admitted: Admitted) -> float:
        model = admitted.model
        feedback = admitted.feedback
        timeout = min(self.dispatcher.queue_timeout, self._proxy_timeout)

        def seen(ticket: Ticket) -> None:
            if feedback is not None:
                queues = self.dispatcher.queues
                feedback.line = lambda: f": waiting for {model}: {queues.ahead(ticket)} ahead"

        return await self.dispatcher.turn(
            model, admitted.priority, admitted.tenant, timeout, seen=seen
        )

    @contextlib.contextmanager
    def sending(self, admitted: Admitted) -> Iterator[None]:
        """While the request is at a backend: in flight in its model's demand."""
        if admitted.feedback is not None:
            admitted.feedback.stop()  # the upstream's stream follows the comment lines
        counts = self.demand.in_flight
        model = admitted.model
        counts[model] = counts.get(model, 0) + 1
        try:
            yield
        finally:
            self.demand.add(counts, model, -1)

    def snapshot(self) -> dict[str, ModelDemand]:
        """Every known model's demand now."""
        queues = self.dispatcher.queues

        def queued(model: str) -> dict[str, int]:
            depth = queues.depth(model)
            return {label: depth.get(Priority[label.upper()], 0) for label in LABELS}

        return self.demand.snapshot(self._pool.known_models(), queued)

    def drain(self, timeout: float) -> None:
        """Stop admitting; what still waits ``DRAIN_MARGIN_S`` before ``timeout`` seconds
        from now is answered 503 ``draining`` (with ``Retry-After``)."""
        self.draining = True
        margin = min(DRAIN_MARGIN_S, timeout / 4)
        asyncio.get_running_loop().call_later(max(0.0, timeout - margin), self._close)

    def _close(self) -> None:
        def error(_: object) -> ApiError:
            return Draining()

        self.dispatcher.queues.close(error)
        self.holds.close(error)
