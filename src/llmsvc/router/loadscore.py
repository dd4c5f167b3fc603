"""An engine's load from its own Prometheus metrics, and ``least_load``'s score.

Three numbers per engine, whatever the engine (the first name found wins):

- waiting requests: ``vllm:num_requests_waiting`` (vLLM and the simulated
  engine), ``sglang:num_queue_reqs``, ``llamacpp:requests_deferred``;
- running requests: ``vllm:num_requests_running``, ``sglang:num_running_reqs``,
  ``llamacpp:requests_processing``;
- KV-cache use, 0..1: ``vllm:kv_cache_usage_perc`` (older vLLM:
  ``vllm:gpu_cache_usage_perc``), ``sglang:token_usage``,
  ``llamacpp:kv_cache_usage_ratio``.

Series with several label sets (one per model, per data-parallel rank) are
summed for the counts; the KV-cache use is the largest of them.

The exposition text is not parsed into metric families: at 1,000 backends
scraped every second that would dominate the router's CPU. Each wanted name is
found with ``bytes.find`` (C speed) and only its own lines are read.

**Score** (lower is better), for a backend of weight ``w``::

    requests = max(0, running + waiting + (in_flight - in_flight_at_scrape))
    score    = (requests + waiting) / w + KV_WEIGHT × kv_cache_use

``in_flight`` is the router's own count now, ``in_flight_at_scrape`` the same
count when the scrape answered: what the router sent since (or saw finish)
keeps decisions fresh between scrapes. A waiting request counts twice: it
says the engine is saturated and a new request would queue too. A full KV
cache weighs like ``KV_WEIGHT`` more requests: the engine will soon queue or
preempt. A backend without a fresh scrape (none yet, or older than its maximum
age) is scored on the router's in-flight count alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

KV_WEIGHT = 4.0
MAX_AGE_INTERVALS = 3  # a scrape older than this many scrape intervals no longer counts

WAITING = (b"vllm:num_requests_waiting", b"sglang:num_queue_reqs", b"llamacpp:requests_deferred")
RUNNING = (
    b"vllm:num_requests_running",
    b"sglang:num_running_reqs",
    b"llamacpp:requests_processing",
)
KV_USE = (
    b"vllm:kv_cache_usage_perc",
    b"vllm:gpu_cache_usage_perc",
    b"sglang:token_usage",
    b"llamacpp:kv_cache_usage_ratio",
)


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """One scrape of an engine: its queue, its running requests, its KV-cache use."""

    waiting: float
    running: float
    kv_use: float
    at: float  # monotonic time of the scrape
    in_flight: int  # the router's in-flight count to the engine at that time

    def view(self, now: float) -> dict[str, Any]:
        return {
            "waiting": self.waiting,
            "running": self.running,
            "kv_cache_use": round(self.kv_use, 4),
            "age_s": round(now - self.at, 3),
        }


def _samples(text: bytes, name: bytes) -> list[float]:
    """Values of every sample of ``name`` (any labels) in an exposition ``text``."""
    values: list[float] = []
    size = len(name)
    start = 0
    while True:
        at = text.find(name, start)
        if at < 0:
            return values
        end = text.find(b"\n", at)
        end = len(text) if end < 0 else end
        start = end
        if at and text[at - 1] != 10:  # not at a line start: a comment or a longer name
            continue
        follow = text[at + size : at + size + 1]
        if follow not in (b"{", b" "):
            continue  # a longer name sharing the prefix (name_total, name_bucket, ...)
        line = text[at:end]
        rest = line[line.rfind(b"}") + 1 :] if follow == b"{" else line[size:]
        fields = rest.split()
        if fields:
            try:
                value = float(fields[0])
            except ValueError:
                continue
            if math.isfinite(value):
                values.append(value)


def _first(text: bytes, names: tuple[bytes, ...]) -> list[float] | None:
    for name in names:
        values = _samples(text, name)
        if values:
            return values
    return None


def parse_load(text: bytes, *, at: float, in_flight: int) -> EngineLoad | None:
    """The load in a ``/metrics`` answer; None when it has none of the known names."""
    waiting = _first(text, WAITING)
    running = _first(text, RUNNING)
    kv = _first(text, KV_USE)
    if waiting is None and running is None and kv is None:
        return None
    return EngineLoad(
        waiting=sum(waiting or ()),
        running=sum(running or ()),
        kv_use=min(1.0, max(0.0, max(kv or (0.0,)))),
        at=at,
        in_flight=in_flight,
    )


def max_load_age(interval: float) -> float:
    """Seconds a scraped load counts for, with scrapes every ``interval`` seconds."""
    return MAX_AGE_INTERVALS * interval


def load_score(load: EngineLoad | None, *, in_flight: int, weight: int) -> float:
    """The score of the module docstring; ``load`` None when no fresh scrape exists."""
    if load is None:
        return in_flight / weight
    requests = max(0.0, load.running + load.waiting + (in_flight - load.in_flight))
    return (requests + load.waiting) / weight + KV_WEIGHT * load.kv_use
