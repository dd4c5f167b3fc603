"""The fleet simulation's vocabulary: what it runs, the engines' lifecycle states, the
kinds of events on its heap, and the samples of its timeline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from llmsvc.autoscale.policy import Policy
from llmsvc.simulate.timing import EngineTiming
from llmsvc.simulate.traces import Trace

Strategy = Literal["least_connections", "round_robin"]
"""How the router picks among the ready engines (its --strategy of the same name)."""

# Engine lifecycle states.
STOPPED, STARTING, READY, DRAINING, STANDBY, WAKING = range(6)

# Fleet event kinds (ENGINE_EVENT is 0).
LIFECYCLE, IDLE_CHECK, HOLD_EXPIRY, TICK, SAMPLE, QUEUE_EXPIRY, HEALTH_CHECK = range(1, 8)


@dataclass(frozen=True, slots=True)
class Sample:
    """The fleet at one moment: engines using a GPU, ready ones, and the demand."""

    t: float
    replicas: int
    ready: int
    demand: int
    held: int
    queued: int = 0  # in the router's queue for a slot


@dataclass(frozen=True, slots=True)
class FleetSetup:
    """What :class:`Fleet` runs: :func:`llmsvc.simulate.api.simulate` builds it."""

    trace: Trace
    timing: EngineTiming
    seed: int
    initial: int  # engines ready at t=0
    scaling: Policy | None  # None: no autoscaler
    autoscale_interval: float
    standby: str | None  # "sleep" | "stop" | None (no standby)
    idle_timeout: float
    hold_timeout: float
    sample_interval: float
    strategy: Strategy = "least_connections"
    backend_concurrency: int | None = None  # the router's slots per engine (None: unlimited)
    queue_size: int = 1000
    queue_timeout: float = 60.0
    idle_check_interval: float = 0.0  # standby: 0 exact; else the babysitter's health checks
    wake_target: float = 0.0  # standby: requests per awake engine before another is woken
