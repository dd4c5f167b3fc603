"""Counters behind ``GET /stats``: per backend (on the backend) and per model (here).

``backends`` (by name) and ``models`` are llmsvc's own; ``services`` lists the backends
again in the shape the InfiniLM-SVC router's ``/stats`` had, for scripts written for it.
"""

from __future__ import annotations

import time
from typing import Any

from llmsvc.router.backends import Backend, BackendPool, BackendStats


class RouterStats:
    """Per-model totals of client requests, for models some backend lists."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.models: dict[str, BackendStats] = {}
        self.requests = 0
        self.errors = 0

    def record(self, model: str, *, error: bool, duration: float, ttft: float | None) -> None:
        self.requests += 1
        self.errors += error
        stats = self.models.get(model)
        if stats is None:
            stats = self.models[model] = BackendStats()
        stats.requests += 1
        stats.errors += error
        stats.response_time_sum += duration
        if ttft is not None:
            stats.ttft_sum += ttft
            stats.ttft_count += 1

    def render(self, pool: BackendPool, now: float) -> dict[str, Any]:
        return {
            "uptime_s": round(now - self.started, 3),
            "requests": self.requests,
            "errors": self.errors,
            "backends": {
                b.name: {
                    **b.stats.as_dict(),
                    "in_flight": b.in_flight,
                    "healthy": b.healthy(now),
                    "models": sorted(b.models),
                }
                for b in pool
            },
            "models": {name: s.as_dict() for name, s in sorted(self.models.items())},
            "services": [service_view(b, now) for b in pool],
        }


def service_view(backend: Backend, now: float) -> dict[str, Any]:
    """One backend as the InfiniLM-SVC router's ``/stats`` listed it: a list of these is
    what ``jq '.services[].response_time'`` reads (mean seconds, null before a request)."""
    stats = backend.stats
    done = stats.requests
    return {
        "name": backend.name,
        "url": backend.url,
        "healthy": backend.healthy(now),
        "requests": done,
        "errors": stats.errors,
        "response_time": round(stats.response_time_sum / done, 6) if done else None,
        "ttft": round(stats.ttft_sum / stats.ttft_count, 6) if stats.ttft_count else None,
        "in_flight": backend.in_flight,
        "models": sorted(backend.models),
    }
