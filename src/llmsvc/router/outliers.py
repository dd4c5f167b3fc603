"""Outlier ejection, Envoy's outlier detection simplified: the rules and a backend's state.

Pure (the clock is passed in). Two rules take a backend out that its health check
keeps in (it answers ``/health`` but serves badly):

- **consecutive failures**: ``--outlier-consecutive-failures`` failures in a row
  (timeouts, 5xx, broken answers; never a poison request's, see ``attempt``), as
  Envoy's ``consecutive_gateway_failure``; connect errors are left to the health
  checks and passive health, which re-admit a restarted engine at its first pass;
- **latency**: its EWMA first-byte time (streams and plain answers apart) above
  ``--outlier-latency-factor`` times the median of its peers' for the same model,
  and at least :data:`MIN_EXCESS_S` above it, each with ``latency.MIN_SAMPLES``.

An ejection lasts ``--outlier-ejection-time`` times the number of times the backend
was ejected (at most :data:`MAX_EJECTION_MULTIPLE` times it); a backend that stayed
in for that longest time since its last ejection starts again at one. No rule takes
out more than ``--outlier-max-ejection-percent`` of a model's backends, nor the last
healthy one (``ejection.Ejector`` checks that). Unlike a passive take-out, a passing
health check does not end an outlier ejection (the backend passed those all along),
but a check that passes after one failed does: the backend is a new process, or no
longer hung, and its past is forgotten (``Backend.record_check``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

MAX_EJECTION_MULTIPLE = 10  # the longest ejection: this many times the base time
MIN_EXCESS_S = 0.5  # a latency outlier is also this much slower than its peers' median


@dataclass(frozen=True, slots=True)
class OutlierRules:
    """The outlier flags; 0 turns a rule off."""

    consecutive_failures: int  # --outlier-consecutive-failures
    latency_factor: float  # --outlier-latency-factor
    ejection_time: float  # --outlier-ejection-time (the base, seconds)
    max_ejection_percent: int  # --outlier-max-ejection-percent

    def ejection_seconds(self, times: int) -> float:
        """How long the ``times``-th ejection in a row lasts."""
        return self.ejection_time * min(times, MAX_EJECTION_MULTIPLE)

    def may_eject(self, members: int, ejected: int) -> bool:
        """Whether one more of ``members`` backends may be ejected, ``ejected`` being out."""
        return ejected + 1 <= math.floor(members * self.max_ejection_percent / 100)

    def is_slow(self, ewma: float, peers_median: float) -> bool:
        """Whether a first-byte EWMA stands far above the peers' median."""
        return (
            self.latency_factor > 0
            and ewma > self.latency_factor * peers_median
            and ewma - peers_median >= MIN_EXCESS_S
        )


@dataclass(slots=True)
class OutlierState:
    """One backend's outlier bookkeeping."""

    consecutive: int = 0  # failures in a row
    times: int = 0  # ejections in a row (the multiplier)
    ejected_until: float = 0.0
    reason: str | None = None  # of the last ejection

    def available(self, now: float) -> bool:
        return now >= self.ejected_until

    def eject(self, now: float, rules: OutlierRules, reason: str) -> float:
        """Take the backend out now; for how many seconds."""
        if now - self.ejected_until > rules.ejection_seconds(MAX_EJECTION_MULTIPLE):
            self.times = 0  # it stayed in long enough: start over
        self.times += 1
        seconds = rules.ejection_seconds(self.times)
        self.ejected_until = now + seconds
        self.consecutive = 0
        self.reason = reason
        return seconds

    def reset(self) -> None:
        """Forget everything (a restarted or re-registered engine)."""
        self.consecutive = 0
        self.times = 0
        self.ejected_until = 0.0
        self.reason = None


def median_without(ordered: Sequence[float], index: int) -> float:
    """The median of the sorted ``ordered`` without its element at ``index`` (which must
    leave at least one): each backend's peers' median in O(1)."""
    rest = len(ordered) - 1

    def at(j: int) -> float:
        return ordered[j if j < index else j + 1]

    if rest % 2:
        return at(rest // 2)
    return (at(rest // 2 - 1) + at(rest // 2)) / 2
