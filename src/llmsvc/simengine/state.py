"""Typed application state of the simulated engine's ``web.Application``."""

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


ENGINE = web.AppKey("engine", Engine)
READINESS = web.AppKey("readiness", Readiness)
REGISTRY = web.AppKey("metrics_registry", CollectorRegistry)
STARTED = web.AppKey("started", int)
