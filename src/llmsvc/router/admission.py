"""A request's way from the router's door to a backend: admission, hold, queue, pick.

``Proxy.handle`` reads the body (and gives the request its id, ``accesslog``); then,
in this order (docs/flow-control.md):

1. :meth:`FlowControl.admit`: an unknown model is a 404; a draining router answers
   503 ``draining``; the priority class (``X-Llmsvc-Priority``, 400
   ``invalid_priority``); the tenant (``tenants``) may use the model, else 403, and
   caps the class; a model in maintenance is a 503; the tenant's rate limits
   (``ratelimit``, 429), whose grant goes on the request for its headers.
2. :meth:`FlowControl.backend`, once per try: a model with no eligible backend is
   held (``hold``) up to ``--hold-timeout``; backends out by their own maintenance
   entry are skipped; with slots, a request that finds none free (or others already
   in line) waits in its model's line (``dispatch``) up to ``--queue-timeout``; then
   the strategy picks among the backends with room.
3. :meth:`FlowControl.done`, once per request whatever happened: a rejection is
   counted with its reason (``metrics.Rejection``), the tenant's grant settled with
   the answer's usage (0 tokens for a request no engine saw, the estimate when an
   engine failed it), the tenant's requests and tokens counted, the access-log line.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from llmsvc.core.errors import ApiError, ModelNotFound
from llmsvc.core.wire import RoutingInfo
from llmsvc.router.accesslog import AccessEntry, access_log_enabled, log_access
from llmsvc.router.attempt import CLIENT_CLOSED, Exchange
from llmsvc.router.backends import Backend, BackendPool
from llmsvc.router.balancing import Key, Strategy
from llmsvc.router.candidates import Eligible, untried
from llmsvc.router.demand import DemandCounter, ModelDemand
from llmsvc.router.dispatch import Dispatcher, Draining
from llmsvc.router.flowqueue import Ticket
from llmsvc.router.hold import Feedback, Holds
from llmsvc.router.maintenance import InMaintenance, Maintenance
from llmsvc.router.metrics import UNKNOWN_MODEL, Rejection, RouterMetrics
from llmsvc.router.priority import LABELS, PRIORITY_HEADER, Priority, capped, parse_priority
from llmsvc.router.ratelimit import GRANT_KEY, Grant, RateLimiter, estimate_tokens
from llmsvc.router.settings import RouterSettings
from llmsvc.router.tenants import ANONYMOUS, ModelNotAllowed, Tenant, tenant_of
from llmsvc.router.usage import StreamUsage

CONTENTION_HEADER = "X-Llmsvc-Contention"
CONTENDED = web.RequestKey("llmsvc.contended", str)
"""The model of a request admitted at class ``batch``: its answer says the contention."""
REJECTIONS = frozenset(r.value for r in Rejection)  # error codes counted as rejections
DRAIN_MARGIN_S = 1.0  # those still waiting are answered this long before the drain's end


@dataclass(slots=True)
class Admitted:
    """One request's flow-control state, from its id to its access-log line."""

    request_id: str
    model: str = ""  # the body's, once read
    label: str = UNKNOWN_MODEL  # its model_name label (the model, once known)
    priority: Priority = Priority.STANDARD
    tenant: Tenant = ANONYMOUS
    stream: bool = False
    grant: Grant | None = None  # its rate-limit charge, once admitted
    queue_wait: float = 0.0
    hold: float = 0.0
    feedback: Feedback | None = None
    error: ApiError | None = None  # what it was answered with, if an error
    admitted: bool = False  # past admission (counted as its tenant's request)

    @property
    def response(self) -> web.StreamResponse | None:
        """A held stream's response, its headers out: the rest of the answer goes there."""
        return self.feedback.response if self.feedback is not None else None


class _Sending:
    """:meth:`FlowControl.sending`'s context (a class: cheaper than a generator's)."""

    __slots__ = ("_demand", "_grew", "_model")

    def __init__(
        self, demand: DemandCounter, model: str, grew: Callable[[str], None] | None
    ) -> None:
        self._demand = demand
        self._model = model
        self._grew = grew

    def __enter__(self) -> None:
        counts = self._demand.in_flight
        counts[self._model] = counts.get(self._model, 0) + 1
        if self._grew is not None:
            self._grew(self._model)

    def __exit__(self, *_: object) -> None:
        self._demand.add(self._demand.in_flight, self._model, -1)


class FlowControl:
    """The router's holds, lines and demand, and the drain that ends them."""

    def __init__(
        self,
        *,
        pool: BackendPool,
        strategy: Strategy,
        settings: RouterSettings,
        metrics: RouterMetrics,
        maintenance: Maintenance,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._maintenance = maintenance
        self._limiter = RateLimiter()
        self._access_log = settings.access_log
        self._strategy = strategy
        self._clock = clock
        self._hold_timeout = settings.hold_timeout
        self._feedback_interval = settings.hold_feedback_interval
        self._proxy_timeout = settings.proxy_timeout
        self.demand = DemandCounter()
        self.holds = Holds(pool, self.demand, clock=clock)
        self.dispatcher = Dispatcher(pool=pool, settings=settings, out=self._out, clock=clock)
        self.draining = False
        # Told the model when a request of it goes in flight or joins its line (the waker:
        # the demand grew while engines are ready; held requests reach it through holds).
        self.on_demand: Callable[[str], None] | None = None

    def model_demand(self, model: str) -> int:
        """``model``'s requests in flight, queued and held now (``GET /demand``'s demand)."""
        demand = self.demand
        queued = sum(self.dispatcher.queues.depth(model).values())
        return demand.in_flight.get(model, 0) + queued + demand.held.get(model, 0)

    def contention(self, model: str) -> int:
        """Requests of the classes above ``batch`` waiting for ``model`` now, in its line or
        held: what ``X-Llmsvc-Contention`` tells the batch runner (one model's counts, no
        scan of the others)."""
        depth = self.dispatcher.queues.depth(model)
        higher = sum(n for p, n in depth.items() if p < Priority.BATCH)
        return higher + self.holds.count(model)

    def tell_contention(self, request: web.Request, response: web.StreamResponse) -> None:
        """The answer to a batch-class request, before its headers go out and while it
        still holds its slot (so what waits for that slot counts): its
        ``X-Llmsvc-Contention``."""
        model = request.get(CONTENDED)
        if model is not None and not response.prepared:
            response.headers[CONTENTION_HEADER] = str(self.contention(model))

    def admit(
        self, request: web.Request, info: RoutingInfo, admitted: Admitted, label: str
    ) -> None:
        """Admission, in the contract's order: 503 ``draining`` once stopping, the class
        (400 ``invalid_priority``), the tenant's models (403), maintenance (503), the
        tenant's rate limits (429); the grant goes on the request for its headers."""
        admitted.model, admitted.label, admitted.stream = info.model, label, info.stream
        if not self._pool.knows(info.model):
            raise ModelNotFound(info.model)  # 404: never served here, not worth a retry
        if self.draining:
            raise Draining()
        header = request.headers.get(PRIORITY_HEADER)
        if header is not None:  # absent: standard, as admitted is
            admitted.priority = parse_priority(header)
        tenant = admitted.tenant = tenant_of(request)
        if tenant is not ANONYMOUS:  # no keys: no model list, no cap, no limits
            if not tenant.may_use(info.model):
                raise ModelNotAllowed(info.model)
            admitted.priority = capped(admitted.priority, tenant.max_priority)
        if admitted.priority is Priority.BATCH:
            request[CONTENDED] = info.model
        self._maintenance.check(info.model, time.time())
        if tenant.limited:
            estimate = estimate_tokens(info) if tenant.tpm is not None else 0
            request[GRANT_KEY] = admitted.grant = self._limiter.admit(tenant, estimate)
        admitted.admitted = True

    def done(self, request: web.Request, admitted: Admitted, exchange: Exchange) -> None:
        """The request's end: its rejection counted, its tenant's tokens settled and
        counted, its access-log line."""
        if admitted.feedback is not None:
            admitted.feedback.stop()  # no comment line outlives its request
        error = admitted.error
        status = exchange.status or (error.status if error is not None else CLIENT_CLOSED)
        reason = error.code if error is not None else None
        priority = admitted.priority.label
        if reason in REJECTIONS:
            self._metrics.count_rejected(admitted.label, priority, reason)
        usage = exchange.usage
        if isinstance(usage, StreamUsage):
            usage = usage.usage
        grant = admitted.grant
        if grant is not None:
            # Never sent to an engine (rejected after admission): it used no tokens.
            grant.settle(0 if not exchange.tried else usage.total if usage else None)
        if admitted.admitted:
            self._metrics.count_tenant(
                admitted.tenant.name,
                priority,
                usage.prompt_tokens if usage else None,
                usage.completion_tokens if usage else None,
            )
        if self._access_log and access_log_enabled():
            answered = exchange.tried[-1].name if exchange.tried and error is None else None
            log_access(
                AccessEntry(
                    request_id=admitted.request_id,
                    method=request.method,
                    path=request.path,
                    model=admitted.model or None,
                    tenant=admitted.tenant.name,
                    priority=priority,
                    status=status,
                    backend=answered,
                    queue_wait_s=admitted.queue_wait,
                    hold_s=admitted.hold,
                    duration_s=exchange.elapsed(),
                    prompt_tokens=usage.prompt_tokens if usage else None,
                    completion_tokens=usage.completion_tokens if usage else None,
                    stream=admitted.stream,
                    reason=reason,
                )
            )

    def at_once(self, admitted: Admitted, tried: list[Backend], key: Key) -> Backend | None:
        """The usual case, with nothing to wait for (no slots anywhere, an eligible backend
        left): the strategy's pick; None: ask :meth:`backend`, which may wait."""
        if self.dispatcher.active():
            return None
        model = admitted.model
        eligible = self._pool.eligible(model, self._clock())
        if not eligible:
            return None
        tried = self._skip_maintenance(model, eligible, tried)
        if not eligible.offers(tried):
            return None
        return self._strategy.pick(model, eligible, key, tried=tried)

    async def backend(
        self,
        request: web.Request,
        admitted: Admitted,
        exchange: Exchange,
        key: Key,
    ) -> Backend | None:
        """The backend for the next try; None when no untried one is left. A queue wait
        counts toward ``--proxy-timeout``: the exchange's ``budget`` is what is left."""
        backend = await self._backend(request, admitted, exchange.tried, key)
        if admitted.queue_wait:
            exchange.budget = max(0.001, self._proxy_timeout - admitted.queue_wait)
        return backend

    async def _backend(
        self, request: web.Request, admitted: Admitted, tried: list[Backend], key: Key
    ) -> Backend | None:
        model = admitted.model
        now = self._clock()
        eligible = self._pool.eligible(model, now)
        if not eligible:
            if tried:
                return None
            eligible = await self._hold(request, admitted)
            now = self._clock()
        tried = self._skip_maintenance(model, eligible, tried)
        if not eligible.offers(tried):
            return None
        dispatcher = self.dispatcher
        if not dispatcher.active():
            return self._strategy.pick(model, eligible, key, tried=tried)
        if not tried and not (
            dispatcher.may_pass(model) and dispatcher.may_start(model, admitted.priority, now)
        ):
            admitted.queue_wait += await self._queue(admitted)
            now = self._clock()
            eligible = self._pool.eligible(model, now)
            if not eligible:
                return None
        left = untried(eligible, tried)
        full = dispatcher.full(left, now)
        excluded = [*tried, *full] if full and len(full) < len(left) else tried
        return self._strategy.pick(model, eligible, key, tried=excluded)

    def _out(self, backend: Backend, model: str, _: float) -> bool:
        return self._maintenance.backend_out(backend.name, model, time.time())

    def _skip_maintenance(
        self, model: str, eligible: Eligible[Backend], tried: list[Backend]
    ) -> list[Backend]:
        """``tried`` and the backends out by their own maintenance entry; when that is every
        backend left on a first try, 503 ``maintenance`` with the entry's message."""
        board = self._maintenance
        if not board.any_backend_entry:
            return tried  # the usual case: no backend's own entry, nothing to look at
        now = time.time()
        left = untried(eligible, tried)
        out = [b for b in left if board.backend_out(b.name, model, now)]
        if not out:
            return tried
        if len(out) == len(left) and not tried:
            entry = board.backend_entry(out[0].name, model, now)
            assert entry is not None
            raise InMaintenance(entry, now)
        return [*tried, *out]

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
            if self.on_demand is not None:
                self.on_demand(model)
            if feedback is not None:
                queues = self.dispatcher.queues
                feedback.line = lambda: f": waiting for {model}: {queues.ahead(ticket)} ahead"

        started = self._clock()
        try:
            return await self.dispatcher.turn(
                model, admitted.priority, admitted.tenant.name, timeout, seen=seen
            )
        finally:
            waited = self._clock() - started
            self._metrics.observe_queue_wait(admitted.label, admitted.priority.label, waited)

    def sending(self, admitted: Admitted) -> _Sending:
        """``with``: while the request is at a backend, in flight in its model's demand."""
        if admitted.feedback is not None:
            admitted.feedback.stop()  # the upstream's stream follows the comment lines
        return _Sending(self.demand, admitted.model, self.on_demand)

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
