"""A phase's outcomes as numbers: per class (or tenant) requests, served, rejected, TTFT, wait."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from benchmarks.flow.traffic import Flow, Outcome

from llmsvc.bench.stats import percentile


def _pct(values: list[float], q: float) -> float | None:
    return round(percentile(sorted(values), q), 4) if values else None


def group(
    flows: list[Flow], outcomes: list[Outcome], seconds: float, key: Callable[[Flow], str]
) -> dict[str, dict[str, Any]]:
    """Rows keyed by ``key(flow)`` (a class label, a tenant), in the order flows give them.

    ``served_per_s`` is the goodput while the load lasts: answers finished between the
    first fifth of the phase (the ramp, before queues fill) and its end, per second. (All
    requests served in the end would say nothing: without flow control every request is
    served, a minute late.)
    """
    rows: dict[str, dict[str, Any]] = {}
    window = (seconds / 5, seconds)
    for name in dict.fromkeys(key(f) for f in flows):
        mine = [o for o in outcomes if key(flows[o.flow]) == name]
        served = [o for o in mine if o.ok]
        ttfts = [o.ttft for o in served if o.ttft is not None]
        waits = [o.queue_wait for o in mine if o.queue_wait is not None]
        rejected = Counter(o.rejection for o in mine if not o.ok)
        finished = [o for o in served if window[0] <= o.sent + (o.latency or 0) <= window[1]]
        rows[name] = {
            "requests": len(mine),
            "served": len(served),
            "served_per_s": round(len(finished) / (window[1] - window[0]), 3),
            "rejected": dict(sorted(rejected.items())),
            "ttft_p50_s": _pct(ttfts, 50),
            "ttft_p95_s": _pct(ttfts, 95),
            "queue_wait_p50_s": _pct(waits, 50),
            "queue_wait_p95_s": _pct(waits, 95),
            "queue_waits_logged": len(waits),
        }
    return rows


def by_priority(flow: Flow) -> str:
    return flow.priority


def by_tenant(flow: Flow) -> str:
    return flow.tenant
