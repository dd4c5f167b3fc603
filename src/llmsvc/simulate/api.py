"""``simulate(config) -> SimResult``: one policy over one trace, in simulated time.

The Python face of ``llmsvc simulate`` (the agreement benchmark calls it too). A
policy is how the fleet's size is managed:

- ``fixed``: ``workers`` engines always on.
- ``autoscale``: the operator's autoscaler (:class:`llmsvc.autoscale.policy.Scaler`)
  between 1 and ``max_replicas``; starts with 1 ready.
- ``autoscale-zero``: the same with ``min_replicas`` 0; starts with none, so the first
  requests are held through a cold start.
- ``standby``: bare metal: ``workers`` engines, each goes to standby after
  ``idle_timeout`` idle seconds; the first is woken for a held request, more while the
  demand passes ``wake_target`` per awake engine (:func:`llmsvc.autoscale.wake.to_wake`).
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from llmsvc.autoscale.policy import Policy
from llmsvc.simulate.engine import (
    CONTEXT_LENGTH,
    HOLD_TIMEOUT,
    OK,
    QUEUE_FULL,
    QUEUE_TIMEOUT,
    Request,
)
from llmsvc.simulate.events import FleetSetup, Sample, Strategy
from llmsvc.simulate.fleet import Fleet
from llmsvc.simulate.timing import EngineTiming
from llmsvc.simulate.traces import Trace

PolicyName = Literal["fixed", "autoscale", "autoscale-zero", "standby"]
POLICIES: tuple[PolicyName, ...] = ("fixed", "autoscale", "autoscale-zero", "standby")


@dataclass(frozen=True)
class SimConfig:
    """One simulation: the trace, the policy and everything the fleet's timing needs."""

    trace: Trace
    policy: PolicyName = "fixed"
    workers: int = 5
    """fixed and standby: the engines; autoscale: the default ``max_replicas``."""
    seed: int = 0
    timing: EngineTiming = field(default_factory=EngineTiming)
    """Engine timing, cold start and wake (:func:`llmsvc.simulate.timing.engine_timing`)."""
    autoscale: Policy | None = None
    """The autoscale policy; None: ``Policy``'s defaults with max = ``workers``. Its
    ``min_replicas`` is raised to 1 for ``autoscale`` and set to 0 for
    ``autoscale-zero``."""
    autoscale_interval: float = 2.0
    """Seconds between the autoscaler's decisions (the operator's --autoscale-interval)."""
    idle_timeout: float = 10.0
    """standby: idle seconds before an engine goes to standby (0: never)."""
    standby: Literal["sleep", "stop"] = "stop"
    """standby: stop (a wake is a startup_delay; the babysitter's default) or sleep (wake_delay)."""
    idle_check_interval: float = 0.0
    """standby: 0: an engine goes to standby exactly ``idle_timeout`` after its last
    request; else it is seen as the babysitter sees it, at health checks this many
    seconds apart (its ``--health-interval``), up to two of them later."""
    wake_target: float = 8.0
    """standby: requests per awake engine (in flight, queued, held) before another standby
    engine is woken, as the router's ``--wake-target``; 0: only the first, while nothing
    is ready (:func:`llmsvc.autoscale.wake.to_wake`)."""
    hold_timeout: float = 30.0
    """Seconds the router holds a request for a ready engine (then rejected; 0: at once)."""
    sample_interval: float | None = None
    """Seconds between timeline samples; None: a thousandth of the trace, at least 0.1 s."""
    strategy: Strategy = "least_connections"
    """How the router picks a ready engine: least_connections or round_robin."""
    backend_concurrency: int | None = None
    """The router's slots per engine (its --backend-concurrency); a request finding every
    ready engine's slots taken waits in the router's queue. None: unlimited, no queue."""
    queue_size: int = 1000
    """Requests that may wait for a slot (then 429 queue_full), as the router's."""
    queue_timeout: float = 60.0
    """Seconds a request may wait for a slot (then 503 queue_timeout), as the router's."""

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r} (known: {', '.join(POLICIES)})")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1 (got {self.workers})")
        for name in ("autoscale_interval",):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in ("idle_timeout", "hold_timeout", "idle_check_interval", "wake_target"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.backend_concurrency is not None and self.backend_concurrency < 1:
            raise ValueError("backend_concurrency must be at least 1")
        if self.queue_size < 0 or self.queue_timeout <= 0:
            raise ValueError("queue_size must not be negative, queue_timeout must be positive")
        if self.strategy not in ("least_connections", "round_robin"):
            raise ValueError(f"unknown strategy {self.strategy!r}")
        if self.sample_interval is not None and self.sample_interval <= 0:
            raise ValueError("sample_interval must be positive")

    def scaling(self) -> Policy | None:
        """The autoscale policy this config's policy runs (None: no autoscaler)."""
        if self.policy not in ("autoscale", "autoscale-zero"):
            return None
        base = self.autoscale or Policy(min_replicas=1, max_replicas=self.workers)
        if self.policy == "autoscale-zero":
            return dataclasses.replace(base, min_replicas=0)
        return dataclasses.replace(
            base, min_replicas=max(1, base.min_replicas), max_replicas=max(1, base.max_replicas)
        )


@dataclass(frozen=True, slots=True)
class Percentiles:
    p50: float | None
    p95: float | None
    p99: float | None


def percentile(ordered: list[float], q: float) -> float | None:
    """The ``q``-quantile (0..1) of sorted values by the nearest rank; None when empty."""
    if not ordered:
        return None
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 1))))
    return ordered[rank - 1]


@dataclass
class SimResult:
    """What one policy did with the trace."""

    policy: str
    trace: str
    duration: float
    """The trace's window (seconds)."""
    end: float
    """Simulated time the run ended: the duration, or the last request's end if later."""
    requests: list[Request]
    """Every request (arrival order), with its outcome, engine, hold, TTFT and end."""
    timeline: list[Sample]
    cold_starts: int
    wakes: int
    gpu_seconds: float
    ttft_sorted: list[float] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if not self.ttft_sorted:
            self.ttft_sorted = sorted(
                r.first_token - r.arrival for r in self.requests if r.first_token >= 0
            )

    @property
    def ttft(self) -> Percentiles:
        values = self.ttft_sorted
        return Percentiles(
            percentile(values, 0.50), percentile(values, 0.95), percentile(values, 0.99)
        )

    def count(self, outcome: str) -> int:
        return sum(1 for r in self.requests if r.outcome == outcome)

    @property
    def answered(self) -> int:
        return self.count(OK)

    @property
    def rejected(self) -> int:
        return len(self.requests) - self.answered

    @property
    def queued(self) -> int:
        """Requests that waited in the router's queue for a slot (answered or not)."""
        return sum(1 for r in self.requests if r.queued_s > 0)

    @property
    def held(self) -> int:
        """Requests the router held (answered or not) for want of a ready engine."""
        return sum(1 for r in self.requests if r.held_s > 0)

    def ttft_at_least(self, seconds: float) -> int:
        """Answered requests whose TTFT was at least ``seconds``."""
        return len(self.ttft_sorted) - bisect.bisect_left(self.ttft_sorted, seconds)

    def summary(self) -> dict[str, Any]:
        """The report's numbers (rounded so that the JSON is stable and readable)."""
        ttft = self.ttft
        return {
            "policy": self.policy,
            "requests": len(self.requests),
            "answered": self.answered,
            "held": self.held,
            "rejected": self.rejected,
            "queued": self.queued,
            "rejected_by_reason": {
                reason: self.count(reason)
                for reason in (HOLD_TIMEOUT, QUEUE_TIMEOUT, QUEUE_FULL, CONTEXT_LENGTH)
            },
            "ttft_s": {
                "p50": _round(ttft.p50),
                "p95": _round(ttft.p95),
                "p99": _round(ttft.p99),
            },
            "cold_starts": self.cold_starts,
            "wakes": self.wakes,
            "gpu_seconds": round(self.gpu_seconds, 3),
            "max_replicas": max((s.replicas for s in self.timeline), default=0),
            "end_s": round(self.end, 3),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _setup(config: SimConfig) -> FleetSetup:
    scaling = config.scaling()
    initial = scaling.min_replicas if scaling is not None else config.workers
    duration = config.trace.duration
    sample = config.sample_interval or max(0.1, duration / 1000.0)
    return FleetSetup(
        trace=config.trace,
        timing=config.timing,
        seed=config.seed,
        initial=initial,
        scaling=scaling,
        autoscale_interval=config.autoscale_interval,
        standby=config.standby if config.policy == "standby" else None,
        idle_timeout=config.idle_timeout,
        hold_timeout=config.hold_timeout,
        sample_interval=sample,
        strategy=config.strategy,
        backend_concurrency=config.backend_concurrency,
        queue_size=config.queue_size,
        queue_timeout=config.queue_timeout,
        idle_check_interval=config.idle_check_interval,
        wake_target=config.wake_target,
    )


def simulate(config: SimConfig, progress: Callable[[float], None] | None = None) -> SimResult:
    """Run ``config``'s policy over its trace; ``progress`` gets the fraction done (0..1)."""
    fleet = Fleet(_setup(config))
    end = fleet.run(progress)
    return SimResult(
        policy=config.policy,
        trace=config.trace.name,
        duration=config.trace.duration,
        end=end,
        requests=fleet.requests,
        timeline=fleet.timeline,
        cold_starts=fleet.cold_starts,
        wakes=fleet.wakes,
        gpu_seconds=fleet.gpu_seconds,
    )
