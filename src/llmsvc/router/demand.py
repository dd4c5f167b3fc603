"""What a model asks of the fleet right now: in flight, queued for a slot, held.

``ModelDemand.total`` is what an autoscaler reads (``GET /demand``, the
``llmsvc_router_model_demand`` gauge): every request the router has accepted
for the model and not yet answered, whether an engine is working on it, it
waits for a slot, or it waits for an engine to become ready.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ModelDemand:
    """One model's requests in this router process."""

    in_flight: int  # sent to an engine, not yet answered
    queued: Mapping[str, int]  # priority label -> requests waiting for a slot
    held: int  # waiting for a backend to become ready (cold start, standby, all down)

    @property
    def total(self) -> int:
        return self.in_flight + sum(self.queued.values()) + self.held


class DemandCounter:
    """Requests in flight and held, per model, as the request path reports them.

    The queue's share comes from the queues themselves (``FlowQueues.depth``);
    :meth:`snapshot` puts the three together for every known model.
    """

    def __init__(self) -> None:
        self.in_flight: dict[str, int] = {}
        self.held: dict[str, int] = {}

    def add(self, counts: dict[str, int], model: str, delta: int) -> None:
        """Move one model's count in ``counts`` (:attr:`in_flight` or :attr:`held`)."""
        value = counts.get(model, 0) + delta
        if value:
            counts[model] = value
        else:
            counts.pop(model, None)

    def snapshot(
        self, models: Iterable[str], queued: Callable[[str], Mapping[str, int]]
    ) -> dict[str, ModelDemand]:
        """Every model of ``models`` (and any with requests), demand 0 included;
        ``queued(model)``: its tickets by priority label."""
        names = sorted(set(models) | self.in_flight.keys() | self.held.keys())
        return {
            m: ModelDemand(
                in_flight=self.in_flight.get(m, 0), queued=queued(m), held=self.held.get(m, 0)
            )
            for m in names
        }


def demand_view(demand: Mapping[str, ModelDemand]) -> dict[str, Any]:
    """``GET /demand``'s body."""
    models = {
        m: {
            "in_flight": d.in_flight,
            "queued": sum(d.queued.values()),
            "queued_by_priority": dict(d.queued),
            "held": d.held,
            "demand": d.total,
        }
        for m, d in demand.items()
    }
    return {"models": models, "total": sum(d.total for d in demand.values())}
