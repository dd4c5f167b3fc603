"""The simulated engine's application state: one :class:`SimEngineState` under :data:`SIMENGINE`."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry

from llmsvc.simengine.engine import Engine


@dataclass(slots=True)
class Readiness:
    """Ready ``startup_delay`` seconds after the app started (a model "loading")."""

    startup_delay: float
    ready_at: float = field(default=math.inf)

    def start(self) -> None:
        self.ready_at = asyncio.get_running_loop().time() + self.startup_delay

    def ready(self) -> bool:
        return asyncio.get_running_loop().time() >= self.ready_at


@dataclass(frozen=True, eq=False)
class SimEngineState:
    """Everything the simulated engine's handlers share."""

    engine: Engine
    registry: CollectorRegistry  # the engine's metrics, served on /metrics
    readiness: Readiness
    started: int  # Unix time the app was made: the models' ``created``


SIMENGINE = web.AppKey("simengine", SimEngineState)
