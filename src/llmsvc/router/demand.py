"""What a model asks of the fleet right now: in flight, queued for a slot, held.

``ModelDemand.total`` is what an autoscaler reads (``GET /demand``, the
``llmsvc_router_model_demand`` gauge): every request the router has accepted
for the model and not yet answered, whether an engine is working on it, it
waits for a slot, or it waits for an engine to become ready.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ModelDemand:
    """One model's requests in this router process."""

    in_flight: int  # sent to an engine, not yet answered
    queued: Mapping[str, int]  # priority label -> requests waiting for a slot
    held: int  # waiting for a backend to become ready (cold start, standby, all down)

    @property
    def total(self) -> int:
        return self.in_flight + sum(self.queued.values()) + self.held
