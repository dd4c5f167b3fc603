"""Router + autoscaler + engines on one event heap, in simulated time.

The **router** holds a request while no engine is ready (up to ``hold_timeout``, then
it is rejected, as the router's ``--hold-timeout``), and otherwise sends it at once
to the ready engine with the fewest requests in flight (lowest index on a tie;
``least_connections``) or to the next in turn (``round_robin``, the router's
default). Without ``backend_concurrency`` (the router's default) the engines queue;
with it, a request finding every ready engine's slots taken waits in the router's
FIFO queue (``queue_size``, ``queue_timeout``) for the next free slot.

The **autoscaler** asks :class:`llmsvc.autoscale.policy.Scaler` every
``autoscale_interval`` with the observation the operator builds from ``GET /demand``
(demand: in flight + queued + held; waiting: queued + held; the ready engines' mean
KV usage; the ready count) and applies the decision as Kubernetes would: new
replicas start (cold start: ``startup_delay``); removed ones are the starting ones
first, then the least loaded, which drain (no new requests, GPU held until their
last request ends).

The **standby** policy has no autoscaler: an engine idle ``idle_timeout`` goes to
standby (exactly then, or as the babysitter sees it, at its health checks every
``idle_check_interval``), and :func:`llmsvc.autoscale.wake.to_wake` decides, at each
arrival (held, sent or queued), how many to wake (``wake_delay`` for ``sleep``,
``startup_delay`` for ``stop``), as the router does: the first while nothing is ready,
and more while the demand passes ``wake_target`` per ready or waking engine.

GPU-seconds count every second an engine is starting, waking, ready or draining,
from 0 to the end of the simulation (the trace's duration, or the last request's
end when later).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from heapq import heappop, heappush
from itertools import count

from llmsvc.autoscale import policy as autoscale_policy
from llmsvc.autoscale import wake as autoscale_wake
from llmsvc.simulate.engine import (
    CONTEXT_LENGTH,
    ENGINE_EVENT,
    HELD,
    HOLD_TIMEOUT,
    QUEUE_FULL,
    QUEUE_TIMEOUT,
    REJECTED,
    ROUTER_QUEUED,
    Event,
    Request,
    SimEngine,
)
from llmsvc.simulate.events import (
    DRAINING,
    HEALTH_CHECK,
    HOLD_EXPIRY,
    IDLE_CHECK,
    LIFECYCLE,
    QUEUE_EXPIRY,
    READY,
    SAMPLE,
    STANDBY,
    STARTING,
    STOPPED,
    TICK,
    WAKING,
    FleetSetup,
    Sample,
)


class Fleet:
    """One policy's run: call :meth:`run` once."""

    def __init__(self, setup: FleetSetup) -> None:
        self.setup = setup
        self.heap: list[Event] = []
        self._seq = count()
        self.engines: list[SimEngine] = []
        self.ready: list[SimEngine] = []
        self.held: deque[Request] = deque()
        self.held_now = 0
        self.queue: deque[Request] = deque()  # waiting for a slot (--backend-concurrency)
        self.queued_now = 0
        self._turn = -1  # round_robin's last pick
        self._idle_since: dict[int, float] = {}  # health-checked idle clock: since, per engine
        self._idle_seen: dict[int, int] = {}  # the request count it last saw
        self.requests: list[Request] = []
        self.timeline: list[Sample] = []
        self.outstanding = 0
        self.last_end = 0.0
        self.cold_starts = 0
        self.wakes = 0
        self.gpu_seconds = 0.0
        self.scaler = autoscale_policy.Scaler(setup.scaling) if setup.scaling is not None else None

    # -- engines -----------------------------------------------------------------

    def _engine(self) -> SimEngine:
        """A stopped engine to start (lowest index), or a new one."""
        for engine in self.engines:
            if engine.state == STOPPED:
                return engine
        engine = SimEngine(
            len(self.engines),
            self.setup.timing,
            heap=self.heap,
            seq=self._seq,
            seed=self.setup.seed,
            finished=self._finished,
        )
        self.engines.append(engine)
        return engine

    def _power(self, engine: SimEngine, now: float, *, on: bool) -> None:
        if on and engine.on_since is None:
            engine.on_since = now
        elif not on and engine.on_since is not None:
            self.gpu_seconds += now - engine.on_since
            engine.on_since = None

    def _set_ready(self, engine: SimEngine, now: float) -> None:
        engine.state = READY
        self.ready.append(engine)
        self.ready.sort(key=lambda e: e.index)
        self._drain_queue(now)
        self._release_held(now)
        self._maybe_idle(engine, now)
        self._start_health_checks(engine, now)

    def _leave_ready(self, engine: SimEngine) -> None:
        self.ready.remove(engine)

    def _later(self, at: float, kind: int, subject: object, tag: int) -> None:
        heappush(self.heap, (at, next(self._seq), kind, subject, tag))

    def _start(self, engine: SimEngine, now: float, delay: float, state: int) -> None:
        engine.state = state
        engine.life += 1
        self._power(engine, now, on=True)
        self._later(now + delay, LIFECYCLE, engine, engine.life)

    def _stop(self, engine: SimEngine, now: float, state: int = STOPPED) -> None:
        engine.state = state
        engine.life += 1
        self._power(engine, now, on=False)

    def _finished(self, engine: SimEngine, req: Request, now: float) -> None:
        self.outstanding -= 1
        self.last_end = now
        if self.queued_now and engine.state == READY:
            self._drain_queue(now)
        if engine.in_flight == 0:
            if engine.state == DRAINING:
                self._stop(engine, now)
            else:
                self._maybe_idle(engine, now)

    def _maybe_idle(self, engine: SimEngine, now: float) -> None:
        """Standby: look again after ``idle_timeout``; still nothing served, standby."""
        setup = self.setup
        if not setup.standby or setup.idle_timeout <= 0 or setup.idle_check_interval > 0:
            return
        if engine.in_flight == 0:
            self._later(now + setup.idle_timeout, IDLE_CHECK, engine, engine.served)

    def _start_health_checks(self, engine: SimEngine, now: float) -> None:
        """Standby with ``idle_check_interval``: the babysitter's idle clock, which sees the
        engine only at its health checks (``IdleClock``): it starts at the first check
        that finds nothing in flight and no new request, and standby comes at the first
        check ``idle_timeout`` after that."""
        setup = self.setup
        if setup.standby and setup.idle_timeout > 0 and setup.idle_check_interval > 0:
            self._idle_since.pop(engine.index, None)
            self._later(now + setup.idle_check_interval, HEALTH_CHECK, engine, engine.life)

    def _on_health_check(self, engine: SimEngine, life: int, now: float) -> None:
        if life != engine.life or engine.state != READY:
            return  # stopped, in standby or restarted since: that chain of checks ended
        since = self._idle_since.get(engine.index)
        if since is None or engine.in_flight > 0 or engine.served != self._idle_seen[engine.index]:
            self._idle_since[engine.index] = now
            self._idle_seen[engine.index] = engine.served
        elif now - since >= self.setup.idle_timeout - 1e-9:
            self._leave_ready(engine)
            self._stop(engine, now, STANDBY)
            return
        self._later(now + self.setup.idle_check_interval, HEALTH_CHECK, engine, life)

    # -- the router ----------------------------------------------------------------

    def _dispatch(self, req: Request, now: float) -> bool:
        """Send ``req`` to a ready engine with a free slot; False when every slot is taken."""
        ready, slots = self.ready, self.setup.backend_concurrency
        if slots is not None:
            ready = [e for e in ready if e.in_flight < slots]
            if not ready:
                return False
        if self.setup.strategy == "round_robin":
            self._turn += 1
            ready[self._turn % len(ready)].submit(req, now)
            return True
        best, low = ready[0], ready[0].in_flight
        for engine in ready:
            if engine.in_flight < low:
                best, low = engine, engine.in_flight
        best.submit(req, now)
        return True

    def _send(self, req: Request, now: float) -> None:
        """Dispatch, or queue for a slot as the router does (FIFO, one class)."""
        if self.queued_now == 0 and self._dispatch(req, now):
            return
        if self.queued_now >= self.setup.queue_size:
            self._reject(req, now, QUEUE_FULL)
            return
        req.state = ROUTER_QUEUED
        req.queued_s = now  # the time it joined, until it leaves
        self.queue.append(req)
        self.queued_now += 1
        self._later(now + self.setup.queue_timeout, QUEUE_EXPIRY, req, 0)

    def _drain_queue(self, now: float) -> None:
        queue = self.queue
        while queue:
            req = queue[0]
            if req.state != ROUTER_QUEUED:
                queue.popleft()  # timed out
                continue
            joined = req.queued_s
            if not self._dispatch(req, now):
                return
            queue.popleft()
            self.queued_now -= 1
            req.queued_s = now - joined

    def _arrive(self, req: Request, now: float) -> None:
        self.requests.append(req)
        if req.prompt_tokens + req.output_tokens > self.setup.timing.kv_cache_tokens:
            req.state, req.outcome, req.end = REJECTED, CONTEXT_LENGTH, now  # the engine's 400
            return
        self.outstanding += 1
        if self.ready:
            self._send(req, now)
            target = self.setup.wake_target
            if target > 0 and self.outstanding > target * len(self.ready):
                self._wake_if_needed(now)  # the demand grew past the ready engines' share
            return
        if self.setup.hold_timeout <= 0:
            self._reject(req, now, HOLD_TIMEOUT)
            return
        req.state = HELD
        self.held.append(req)
        self.held_now += 1
        self._later(now + self.setup.hold_timeout, HOLD_EXPIRY, req, 0)
        self._wake_if_needed(now)

    def _reject(self, req: Request, now: float, outcome: str) -> None:
        if req.state == HELD:
            req.held_s = now - req.arrival
        elif req.state == ROUTER_QUEUED:
            req.queued_s = now - req.queued_s
        req.state, req.outcome, req.end = REJECTED, outcome, now
        self.outstanding -= 1
        self.last_end = now

    def _release_held(self, now: float) -> None:
        held = self.held
        while held and self.ready:
            req = held.popleft()
            if req.state != HELD:
                continue  # rejected at its hold timeout
            self.held_now -= 1
            req.held_s = now - req.arrival
            self._send(req, now)

    def _wake_if_needed(self, now: float) -> None:
        if not self.setup.standby:
            return
        standby = [e for e in self.engines if e.state == STANDBY]
        waking = sum(1 for e in self.engines if e.state == WAKING)
        wanted = autoscale_wake.to_wake(
            held=self.held_now,
            ready=len(self.ready),
            waking=waking,
            standby=len(standby),
            demand=self.outstanding,
            target=self.setup.wake_target,
        )
        timing = self.setup.timing
        delay = timing.wake_delay if self.setup.standby == "sleep" else timing.startup_delay
        for engine in standby[:wanted]:
            self.wakes += 1
            self._start(engine, now, delay, WAKING)

    # -- the autoscaler --------------------------------------------------------------

    def _tick(self, now: float) -> None:
        scaler = self.scaler
        assert scaler is not None
        ready = self.ready
        kv = sum(e.kv.usage for e in ready) / len(ready) if ready else None
        observation = autoscale_policy.Observation(
            demand=self.outstanding,
            waiting=self.held_now + self.queued_now,
            kv_cache=kv,
            ready=len(ready),
        )
        replicas = [e for e in self.engines if e.state in (STARTING, READY)]
        decision = scaler.decide(now, observation, len(replicas))
        if decision.desired > len(replicas):
            for _ in range(decision.desired - len(replicas)):
                self.cold_starts += 1
                self._start(self._engine(), now, self.setup.timing.startup_delay, STARTING)
        elif decision.desired < len(replicas):
            # As a ReplicaSet scales down: not-ready pods first, then the least busy.
            order = sorted(replicas, key=lambda e: (e.state == READY, e.in_flight, -e.index))
            for engine in order[: len(replicas) - decision.desired]:
                if engine.state == READY:
                    self._leave_ready(engine)
                    if engine.in_flight:
                        engine.state = DRAINING
                        continue
                self._stop(engine, now)

    def _sample(self, now: float) -> None:
        on = sum(1 for e in self.engines if e.on_since is not None)
        self.timeline.append(
            Sample(now, on, len(self.ready), self.outstanding, self.held_now, self.queued_now)
        )

    # -- the loop ------------------------------------------------------------------------

    def _on_lifecycle(self, engine: SimEngine, now: float) -> None:
        if engine.state in (STARTING, WAKING):
            self._set_ready(engine, now)

    def _on_idle_check(self, engine: SimEngine, served: int, now: float) -> None:
        if engine.state == READY and engine.in_flight == 0 and engine.served == served:
            self._leave_ready(engine)
            self._stop(engine, now, STANDBY)

    def _on_hold_expiry(self, req: Request, now: float) -> None:
        if req.state == HELD:
            self.held_now -= 1
            self._reject(req, now, HOLD_TIMEOUT)

    def _on_queue_expiry(self, req: Request, now: float) -> None:
        if req.state == ROUTER_QUEUED:
            self.queued_now -= 1
            self._reject(req, now, QUEUE_TIMEOUT)

    def run(self, progress: Callable[[float], None] | None = None) -> float:
        """Simulate the whole trace; the end time (GPU-seconds are counted up to it)."""
        setup, trace, heap = self.setup, self.setup.trace, self.heap
        duration = trace.duration
        for _ in range(setup.initial):
            engine = self._engine()
            self._power(engine, 0.0, on=True)
            self._set_ready(engine, 0.0)
        if self.scaler is not None:
            self._later(0.0, TICK, None, 0)
        self._later(0.0, SAMPLE, None, 0)
        arrivals, prompts, outputs = trace.arrivals, trace.prompt_tokens, trace.output_tokens
        total, i, infinity = len(arrivals), 0, float("inf")
        end = duration
        while True:
            next_arrival = arrivals[i] if i < total else infinity
            if heap and heap[0][0] <= next_arrival:
                now = heap[0][0]
                if i >= total and self.outstanding == 0:
                    end = max(duration, self.last_end)
                    if now > end:
                        break
                _, _, kind, subject, tag = heappop(heap)
                if kind == ENGINE_EVENT:
                    assert isinstance(subject, SimEngine)
                    if tag == subject.version:
                        subject.on_event(now)
                elif kind == HOLD_EXPIRY:
                    assert isinstance(subject, Request)
                    self._on_hold_expiry(subject, now)
                elif kind == QUEUE_EXPIRY:
                    assert isinstance(subject, Request)
                    self._on_queue_expiry(subject, now)
                elif kind == LIFECYCLE:
                    assert isinstance(subject, SimEngine)
                    if tag == subject.life:
                        self._on_lifecycle(subject, now)
                elif kind == IDLE_CHECK:
                    assert isinstance(subject, SimEngine)
                    self._on_idle_check(subject, tag, now)
                elif kind == HEALTH_CHECK:
                    assert isinstance(subject, SimEngine)
                    self._on_health_check(subject, tag, now)
                elif kind == TICK:
                    self._tick(now)
                    self._later(now + setup.autoscale_interval, TICK, None, 0)
                else:
                    self._sample(now)
                    if progress is not None:
                        progress(min(1.0, now / duration))
                    self._later(now + setup.sample_interval, SAMPLE, None, 0)
            elif i < total:
                now = next_arrival
                self._arrive(Request(i, now, prompts[i], outputs[i]), now)
                i += 1
            else:
                end = max(duration, self.last_end)
                break
        for engine in self.engines:
            self._power(engine, end, on=False)
        if progress is not None:
            progress(1.0)
        return end
