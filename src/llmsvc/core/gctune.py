"""Garbage-collector settings for a long-running server, applied once it has started.

A request allocates a few hundred short-lived objects (the request, headers, the
upstream call, futures, log fields); with CPython's default first-generation
threshold (700 allocations) a collection runs every request or two, and each one
walks the young objects. Everything built at start (settings, the app, metric
families, imported modules) lives as long as the process, so it is moved out of the
collector's sight (``gc.freeze``), and young collections are made rarer. Cyclic
garbage is still collected, later; reference counting frees everything else at
once, as before. Measured on the router (docs/flow-control.md, "Cost").
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 20_000
"""Allocations (minus deallocations) between two young-generation collections."""


def tune_for_serving() -> None:
    """Freeze what exists now and raise the young generation's threshold."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
