"""Counters behind ``GET /stats``: per backend (on the backend) and per model (here)."""

from __future__ import annotations

import time
from typing import Any

from llmsvc.router.backends import BackendPool, BackendStats


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
        }
