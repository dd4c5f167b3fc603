"""What one run measured: per-request samples, percentiles and the summary."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True, slots=True)
class Sample:
    """One finished request.

    ``error`` is None on success, else its kind: ``http_<status>``, ``timeout``,
    ``connection``, ``stream_error`` (an in-band error event or a stream that
    ended without ``[DONE]``) or ``bad_response`` (a body that is not the
    OpenAI shape). ``ttft_s`` is None when no content arrived.
    """

    latency_s: float
    ttft_s: float | None
    output_tokens: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between ranks (numpy's)."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    rank = (len(sorted_values) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    fraction = rank - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * fraction


def distribution(values: Sequence[float]) -> dict[str, float] | None:
    """min, mean, p50/p90/p95/p99 and max of ``values`` in seconds; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    summary = {"min": ordered[0], "mean": sum(ordered) / len(ordered)}
    summary.update({f"p{q}": percentile(ordered, q) for q in PERCENTILES})
    summary["max"] = ordered[-1]
    return {key: round(value, 6) for key, value in summary.items()}


@dataclass(slots=True)
class Results:
    """Every sample of a run, its wall-clock length and whether it was cut short."""

    stream: bool
    samples: list[Sample] = field(default_factory=list)
    elapsed_s: float = 0.0
    interrupted: bool = False

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.samples if s.ok]

    def errors(self) -> dict[str, int]:
        counts = Counter(s.error for s in self.samples if s.error is not None)
        return dict(sorted(counts.items()))

    def summary(self) -> dict[str, Any]:
        """The machine-readable report (``--json``); times in seconds."""
        ok = self.ok
        elapsed = self.elapsed_s
        tokens = sum(s.output_tokens for s in ok)
        ttfts = [s.ttft_s for s in ok if s.ttft_s is not None]
        return {
            "requests": {
                "completed": len(self.samples),
                "ok": len(ok),
                "failed": len(self.samples) - len(ok),
            },
            "elapsed_s": round(elapsed, 6),
            "requests_per_s": round(len(ok) / elapsed, 3) if elapsed > 0 else None,
            "output_tokens": tokens,
            "output_tokens_per_s": round(tokens / elapsed, 3) if elapsed > 0 else None,
            "latency_s": distribution([s.latency_s for s in ok]),
            "ttft_s": distribution(ttfts),
            "ttft_measures": "first_content_chunk" if self.stream else "latency",
            "errors": self.errors(),
            "interrupted": self.interrupted,
        }
