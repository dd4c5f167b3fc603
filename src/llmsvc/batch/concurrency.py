"""How many lines the runner keeps in flight: an AIMD window, like TCP's.

Additive increase: +1 per window's worth of lines answered fine (congestion avoidance).
Multiplicative decrease: x0.5 on a congestion signal, at most once per line duration (a
signal about a line sent before the last decrease is ignored) so one burst of refusals
halves once. Signals: a capacity refusal (429 queue_full /
rate_limit_exceeded, 503 queue_timeout / no_healthy_backend / draining), the router's
``X-Llmsvc-Contention`` > 0 (interactive requests waited for the model), and delay:
a line's seconds per output token above ``DELAY_FACTOR`` x the best recently seen
(Vegas-style; how the runner sees an engine saturating when the router does not queue).
"""

from __future__ import annotations

from collections import deque

DELAY_FACTOR = 1.5
BEST_OF = 200  # the "best recently seen" is over this many answers
MIN_SAMPLES = 4  # answers seen before the delay signal counts
MIN_TOKENS = 16  # shorter answers do not feed the delay signal


class Aimd:
    """The window: never above ``limit``, never below ``floor``."""

    def __init__(self, initial: int, limit: int, floor: int = 1) -> None:
        self.limit = max(1, limit)
        self.floor = max(1, min(floor, self.limit))
        self._window = float(min(max(initial, self.floor), self.limit))
        self._acked = 0.0
        self._last_decrease: float | None = None
        self._delays: deque[float] = deque(maxlen=BEST_OF)

    @property
    def window(self) -> int:
        """Lines allowed in flight now."""
        return int(self._window)

    def on_success(self, *, now: float, sent_at: float, output_tokens: int | None = None) -> None:
        """A line sent at ``sent_at`` was answered fine at ``now``: grow, or shrink if it
        was slow (the delay signal)."""
        duration = max(0.0, now - sent_at)
        # Per output token; an answer of a few tokens is mostly prefill, so it says little
        # about decode speed and is left out (else a short answer after long ones would
        # read as congestion). Without usage (embeddings): per line.
        if output_tokens is None or output_tokens >= MIN_TOKENS:
            per = duration / output_tokens if output_tokens else duration
            best = min(self._delays) if self._delays else None
            self._delays.append(per)
            slow = best is not None and per > DELAY_FACTOR * best
            if slow and len(self._delays) > MIN_SAMPLES:
                self.on_congestion(now=now, sent_at=sent_at)
                return
        self._acked += 1
        if self._acked >= self._window:
            self._acked = 0
            self._window = min(float(self.limit), self._window + 1)

    def on_congestion(self, *, now: float, sent_at: float) -> bool:
        """A refusal or a contention signal for a line sent at ``sent_at``: halve, unless
        the window was already halved after that line was sent (one burst, one halving,
        as TCP reacts once per round trip); True if it did."""
        if self._last_decrease is not None and sent_at <= self._last_decrease:
            return False
        self._last_decrease = now
        self._acked = 0
        self._window = max(float(self.floor), self._window / 2)
        return True
