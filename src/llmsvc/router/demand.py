"""What a model asks of the fleet right now: in flight, queued for a slot, held.

``ModelDemand.total`` is what an autoscaler reads (``GET /demand``, the
``llmsvc_router_model_demand`` gauge): every request the router has accepted
for the model and not yet answered, whether an engine is working on it, it
waits for a slot, or it waits for an engine to become ready. Beside it ``GET
/demand`` says what serves it now (:class:`ModelFleet`): the model's ready
backends and their mean KV-cache use, for an autoscaler's ``kvCache`` metric.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llmsvc.router.backends import Backend

KV_CACHE_USE = "KV-cache use"  # loadscore's name of the input an engine may not export


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


@dataclass(frozen=True, slots=True)
class ModelFleet:
    """What serves one model now, as this router sees it."""

    ready: int  # its eligible backends
    kv_cache_usage: float | None  # their mean scraped KV-cache use (0..1); None: no scrape


NO_FLEET = ModelFleet(ready=0, kv_cache_usage=None)


def model_fleet(eligible: Sequence[Backend], now: float, max_age: float) -> ModelFleet:
    """The ready backends of a model (``eligible``) and the mean of their KV-cache use
    scraped in the last ``max_age`` seconds; an engine that exports no KV-cache series
    (read as 0 by ``least_load``) and one without a fresh scrape are left out of the mean,
    which is None when none is left (the scrape runs only for ``--strategy least_load``)."""
    kv = [
        load.kv_use
        for b in eligible
        if (load := b.load) is not None
        and now - load.at <= max_age
        and KV_CACHE_USE not in load.missing
    ]
    return ModelFleet(ready=len(eligible), kv_cache_usage=sum(kv) / len(kv) if kv else None)


def demand_view(
    demand: Mapping[str, ModelDemand], fleet: Mapping[str, ModelFleet] | None = None
) -> dict[str, Any]:
    """``GET /demand``'s body; ``fleet``: each model's ready backends and KV-cache use."""
    fleet = fleet or {}
    models = {
        m: {
            "in_flight": d.in_flight,
            "queued": sum(d.queued.values()),
            "queued_by_priority": dict(d.queued),
            "held": d.held,
            "demand": d.total,
            "kv_cache_usage": _rounded((f := fleet.get(m, NO_FLEET)).kv_cache_usage),
            "ready": f.ready,
        }
        for m, d in demand.items()
    }
    return {"models": models, "total": sum(d.total for d in demand.values())}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
