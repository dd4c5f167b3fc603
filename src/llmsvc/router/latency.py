"""How long a backend takes to its first byte, and the first-byte limit derived from it.

Pure: the proxy measures, these keep and compute. A :class:`LatencyWindow` holds a
backend's recent first-byte times of one kind (streams: to the first chunk; plain
answers: to the headers, which for an LLM engine is the whole answer), their p99
(recomputed every :data:`P99_EVERY` samples, not per request) and an EWMA (the
outlier detection compares it with the backend's peers').

:class:`FirstByteLimits` turns a window into the time a request may wait for its
first byte before it is retried elsewhere: ``--first-byte-timeout`` when given, else
``max(floor, LIMIT_FACTOR x p99)`` capped at ``--proxy-timeout``, the floor alone
while the window has fewer than :data:`MIN_SAMPLES`. The floors suit LLM prefill
and generation (docs/router.md argues them); hung backends are found sooner by the
suspicion probes (``suspicion``), so this limit bounds pathological slowness only.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

HISTORY = 200  # first-byte times kept per backend and kind
MIN_SAMPLES = 20  # fewer: the floor alone (and no latency outlier)
P99_EVERY = 10  # new samples between two computations of the p99
LIMIT_FACTOR = 4.0  # the derived limit is this many times the recent p99
EWMA_ALPHA = 0.1  # weight of a new sample in the EWMA (about the last 20 count)


class LatencyWindow:
    """A backend's recent first-byte times of one kind (seconds)."""

    __slots__ = ("_fresh", "_p99", "_samples", "ewma")

    def __init__(self) -> None:
        self._samples: deque[float] = deque(maxlen=HISTORY)
        self._p99: float | None = None
        self._fresh = 0  # samples since the p99 was computed
        self.ewma: float | None = None

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, seconds: float) -> None:
        self._samples.append(seconds)
        self._fresh += 1
        self.ewma = seconds if self.ewma is None else self.ewma + EWMA_ALPHA * (seconds - self.ewma)

    def p99(self) -> float | None:
        """The 99th percentile of the window; None with fewer than MIN_SAMPLES."""
        if len(self._samples) < MIN_SAMPLES:
            return None
        if self._p99 is None or self._fresh >= P99_EVERY:
            ordered = sorted(self._samples)
            self._p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
            self._fresh = 0
        return self._p99

    def clear(self) -> None:
        """Forget the history (the backend was restarted or re-registered)."""
        self._samples.clear()
        self._p99 = None
        self._fresh = 0
        self.ewma = None


@dataclass(frozen=True, slots=True)
class FirstByteLimits:
    """How long a request may wait for a backend's first byte."""

    fixed: float | None  # --first-byte-timeout: the same for every backend
    stream_floor: float  # --stream-first-byte-floor
    plain_floor: float  # --plain-first-byte-floor
    cap: float  # --proxy-timeout

    def limit(self, window: LatencyWindow, *, stream: bool) -> float:
        """Seconds for the next request of this kind to the window's backend."""
        if self.fixed is not None:
            return self.fixed
        floor = self.stream_floor if stream else self.plain_floor
        p99 = window.p99()
        derived = floor if p99 is None else max(floor, LIMIT_FACTOR * p99)
        return min(derived, self.cap)
