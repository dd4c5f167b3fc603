"""When to wake a bare-metal standby engine (the router and the simulator ask).

One at a time: a held request needs one engine, and waking every standby engine of a
model for a burst would spend GPUs on demand that one replica can take. A second is
woken only when the first fails or goes back to standby (it is then no longer
``waking``), or when the held requests are still there after it is ready and the
autoscaler (not this rule) wants more.
"""

from __future__ import annotations


def to_wake(*, held: int, ready: int, waking: int, standby: int) -> int:
    """How many standby engines of a model to wake now: 1 when requests are held and
    none is ready or already waking and one is in standby; else 0."""
    if held > 0 and ready <= 0 and waking <= 0 and standby > 0:
        return 1
    return 0
