"""How many replicas a model's demand needs, and when to change the replica count.

:func:`need` is the instantaneous answer: ``ceil(demand / target_requests)`` (metric
``requests``) or ``ceil(ready * kv_cache / target_kv_cache)`` (metric ``kvCache``),
at least 1 while requests wait, within ``[min_replicas, max_replicas]``.

:class:`Scaler` turns a series of needs into decisions, with asymmetric damping
(the same shape as Kubernetes' HPA stabilization window and KubeAI's scale-down
delay):

- **Up** as soon as the need has stayed above the current replicas for
  ``scale_up_delay`` seconds (0: at once), to the lowest need seen over that
  window: the level the demand has *sustained*, not one spike.
- **Down** only to the highest need seen over the last ``scale_down_delay`` seconds:
  a replica is given back only when no observation in the window needed it, so a
  bursty load does not flap between cold starts.
- Never below ``min_replicas`` nor above ``max_replicas`` (a current count outside
  them is brought back at once), and never to 0 while there is demand.

Each :meth:`Scaler.decide` is amortized O(1): two deques of ``(time, need)`` kept
monotonic (a sliding-window max and min), so the simulator can run a day of traffic
through it. The deques hold *unclamped* needs and the clamp is applied with the
policy of the moment, so a spec change (a lowered max) applies at once while the
window's history survives it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

Metric = Literal["requests", "kvCache"]

_EPSILON = 1e-9  # 0.8 * 3 / 0.8 is 3.0000000000000004: not a reason for a 4th replica


@dataclass(frozen=True, slots=True)
class Policy:
    """An InferenceService's ``spec.autoscaling``, in seconds and plain numbers."""

    min_replicas: int
    max_replicas: int
    target_requests: float = 8
    target_kv_cache: float = 0.8
    scale_up_delay: float = 0.0  # seconds
    scale_down_delay: float = 300.0  # seconds
    metric: Metric = "requests"

    def __post_init__(self) -> None:
        if self.min_replicas < 0 or self.max_replicas < self.min_replicas:
            raise ValueError(
                f"need 0 <= min_replicas <= max_replicas "
                f"(got {self.min_replicas}, {self.max_replicas})"
            )
        if self.target_requests <= 0 or self.target_kv_cache <= 0:
            raise ValueError("target_requests and target_kv_cache must be positive")
        if self.scale_up_delay < 0 or self.scale_down_delay < 0:
            raise ValueError("scale_up_delay and scale_down_delay must not be negative")

    def clamp(self, replicas: int) -> int:
        """``replicas`` within ``[min_replicas, max_replicas]``."""
        return max(self.min_replicas, min(self.max_replicas, replicas))


@dataclass(frozen=True, slots=True)
class Observation:
    """One look at a model's demand, summed over every router that answered."""

    demand: int  # in flight + queued + held, summed over every router answered
    waiting: int  # queued + held (waiting for a slot or for an engine)
    kv_cache: float | None = None  # mean KV-cache usage (0..1) over the ready replicas
    ready: int = 0  # replicas ready now


def _ceil(value: float) -> int:
    return max(0, math.ceil(value - _EPSILON))


def raw_need(policy: Policy, obs: Observation, current: int) -> int:
    """:func:`need` before the ``[min, max]`` clamp (what the windows remember)."""
    if policy.metric == "kvCache":
        if obs.kv_cache is None:
            replicas = current
        else:
            replicas = _ceil(obs.ready * obs.kv_cache / policy.target_kv_cache)
    else:
        replicas = _ceil(obs.demand / policy.target_requests)
    if obs.waiting > 0:
        replicas = max(replicas, 1)
    return replicas


def need(policy: Policy, obs: Observation, current: int) -> int:
    """Replicas the demand needs now, within [min, max]. requests:
    ceil(demand/target_requests); kvCache: ceil(ready * kv_cache / target_kv_cache)
    (current when kv unknown), and at least 1 whenever waiting > 0 (a model at zero
    with a held request scales up under either metric)."""
    return policy.clamp(raw_need(policy, obs, current))


@dataclass(frozen=True, slots=True)
class Decision:
    """What :meth:`Scaler.decide` concluded, with the reason said in words (the Event's
    message: ``Scaled 0 → 1: 3 requests waiting``)."""

    desired: int
    current: int
    reason: str

    @property
    def changed(self) -> bool:
        return self.desired != self.current


class _Window:
    """Sliding-window max (or min) of a step function: each sample's value holds from its
    time until the next sample's. A monotonic deque of ``(until, value)``, so push and
    query are amortized O(1).

    The steps matter when observations are sparse (a slow round, a router that did not
    answer for a while): a need seen once stays in effect until the next look, so a
    single idle observation after a long gap does not count as a whole idle window.
    """

    __slots__ = ("_samples", "_sign")

    def __init__(self, *, largest: bool) -> None:
        self._samples: deque[tuple[float, int]] = deque()  # (in effect until, value)
        self._sign = 1 if largest else -1

    def push(self, now: float, value: int) -> None:
        samples, key = self._samples, self._sign * value
        if samples:  # the latest sample is the last entry: it held until now
            samples[-1] = (now, samples[-1][1])
        while samples and self._sign * samples[-1][1] <= key:
            samples.pop()  # dominated: the new value holds at least as long
        samples.append((now, value))

    def __bool__(self) -> bool:
        return bool(self._samples)

    def best(self, now: float, span: float) -> int:
        """The max (min) over ``(now - span, now]`` (the latest sample's value always)."""
        samples, since = self._samples, now - span
        while len(samples) > 1 and samples[0][0] <= since:
            samples.popleft()
        return samples[0][1]


class Scaler:
    """One service's decisions over time: up at once (after scale_up_delay of continued
    need), down only to the highest need seen over the last scale_down_delay seconds;
    never below min, never above max; never to 0 while demand > 0."""

    __slots__ = ("_above_since", "_down", "_idle_since", "_up", "policy")

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._down = _Window(largest=True)
        self._up = _Window(largest=False)
        self._above_since: float | None = None  # need > current continuously since
        self._idle_since: float | None = None  # demand 0 continuously since

    def update(self, policy: Policy) -> None:
        """Take a changed ``spec.autoscaling``: the windows' history is kept (a scale-down
        delay already served is not served again), the new bounds apply at once."""
        self.policy = policy

    def decide(self, now: float, obs: Observation, current: int) -> Decision:
        """The replicas to run now, given what was observed at ``now`` and ``current``
        (the replicas the Deployment has)."""
        policy = self.policy
        raw = raw_need(policy, obs, current)
        if self._idle_since is None and obs.demand <= 0:
            self._idle_since = now
        elif obs.demand > 0:
            self._idle_since = None
        if not self._down:
            # Nothing seen yet (a fresh operator): what runs now counts as needed, so a
            # restart does not give replicas back before a full scale-down delay.
            self._down.push(now, current)
        self._down.push(now, raw)
        self._up.push(now, raw)
        desired, reason = self._choose(now, obs, current, policy.clamp(raw))
        if desired == 0 and obs.demand > 0 and policy.max_replicas > 0:
            desired, reason = 1, _demand_reason(obs, current, policy)
        return Decision(desired=desired, current=current, reason=reason)

    def _choose(self, now: float, obs: Observation, current: int, now_need: int) -> tuple[int, str]:
        policy = self.policy
        if now_need <= current:
            self._above_since = None
        elif self._above_since is None:
            self._above_since = now
        if current > policy.max_replicas:
            return policy.max_replicas, f"above maxReplicas {policy.max_replicas}"
        if current < policy.min_replicas:
            return policy.min_replicas, f"below minReplicas {policy.min_replicas}"
        if now_need > current:
            assert self._above_since is not None
            waited = now - self._above_since
            if waited + _EPSILON < policy.scale_up_delay:
                return current, (
                    f"needs {now_need}, waiting {waited:.0f} s of the {policy.scale_up_delay:g} s"
                    " scale-up delay"
                )
            target = policy.clamp(self._up.best(now, policy.scale_up_delay))
            if target <= current:  # the window still holds a need this count covers
                return current, f"needs {now_need}, not yet for {policy.scale_up_delay:g} s"
            return target, _demand_reason(obs, current, policy)
        if now_need < current:
            kept = policy.clamp(self._down.best(now, policy.scale_down_delay))
            if kept < current:
                return kept, self._down_reason(now, obs, kept)
            return current, f"needs {now_need}, keeping {kept} for the scale-down delay"
        return current, f"needs {current}"

    def _down_reason(self, now: float, obs: Observation, kept: int) -> str:
        delay = self.policy.scale_down_delay
        if obs.demand <= 0 and kept == self.policy.min_replicas and self._idle_since is not None:
            idle = now - self._idle_since
            return f"idle for {idle:.0f} s" if idle >= 10 else f"idle for {idle:.1f} s"
        return f"needed at most {kept} over the last {delay:.0f} s"


def _demand_reason(obs: Observation, current: int, policy: Policy) -> str:
    if current == 0 and obs.waiting > 0:
        return f"{obs.waiting} requests waiting"
    if policy.metric == "kvCache" and obs.kv_cache is not None:
        return (
            f"KV cache {obs.kv_cache:.0%} over {obs.ready} replicas"
            f" (target {policy.target_kv_cache:.0%})"
        )
    return f"demand {obs.demand} over {current} replicas"
