"""When to wake a bare-metal standby engine (the router and the simulator ask).

On bare metal no autoscaler asks for engines: the router is the only one that sees the
demand, so this rule is the whole of standby's scaling. Two parts:

- **The first engine.** Requests are held (nothing of the model is ready): wake one, and
  only one, until it is ready or its wake fails. A burst of held requests needs an
  engine, not every standby engine of the model at once.
- **Growing with demand** (``target`` > 0). Once engines are ready the requests are no
  longer held, so the first part alone would never wake a second engine however long
  the engines' queues grow (part F's simulator found a diurnal peak served by the
  engines that happened to stay up: TTFT p50 in the thousands of seconds). With a
  target of ``target`` requests per engine, engines are woken until the ready and
  waking ones number ``ceil(demand / target)``, as the autoscaler's ``requests``
  metric would ask (:func:`llmsvc.autoscale.policy.need`). It never wakes more than
  are in standby, and what is already waking counts, so asking again before a wake
  shows up wakes nothing more.

``target`` 0 keeps the first part only (the rule before growing was added).
"""

from __future__ import annotations

import math


def to_wake(
    *,
    held: int,
    ready: int,
    waking: int,
    standby: int,
    demand: int = 0,
    target: float = 0,
) -> int:
    """How many standby engines of a model to wake now.

    ``held``: its requests waiting for an engine; ``ready``, ``waking``, ``standby``: its
    engines in each state; ``demand``: its requests in flight, queued and held (at least
    ``held`` is assumed); ``target``: requests per awake engine before another is woken
    (0: only the first). 1 when requests are held and none is ready or waking; with a
    target, also enough that ``ready + waking >= ceil(demand / target)``; never more
    than ``standby``.
    """
    if standby <= 0:
        return 0
    first = 1 if held > 0 and ready <= 0 and waking <= 0 else 0
    if target <= 0:
        return first
    wanted = math.ceil(max(demand, held) / target)
    return min(standby, max(first, wanted - max(ready, 0) - max(waking, 0)))
