"""The operator's own HTTP endpoint (port 8090): ``/health``, ``/metrics``, ``/openapi.json``."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, Field

from llmsvc import __version__
from llmsvc.core.app import Route, make_app
from llmsvc.core.errors import ServiceUnavailable
from llmsvc.core.jsonio import model_response
from llmsvc.core.metrics import metrics_handler
from llmsvc.operator.reconcile import Reconciler


class OperatorHealth(BaseModel):
    """``GET /health`` once the operator is ready."""

    status: str = Field(description="'ok'.")
    watching: list[str] = Field(description="Namespaces managed; ['*'] for all of them.")
    inference_services: int = Field(description="InferenceServices seen since the start.")
    uptime_s: float


@dataclass(frozen=True, eq=False)
class OperatorState:
    """Everything the endpoint's handlers read."""

    reconciler: Reconciler
    ready: asyncio.Event  # set by kopf once it has started
    prometheus: CollectorRegistry
    watching: list[str]  # namespaces managed; ['*'] for all of them
    started: float = field(default_factory=time.monotonic)


OPERATOR = web.AppKey("operator", OperatorState)


async def get_health(request: web.Request) -> web.Response:
    state = request.app[OPERATOR]
    reconciler = state.reconciler
    if not state.ready.is_set():
        raise ServiceUnavailable(
            "The operator is starting: not logged in to the Kubernetes API yet",
            code="not_ready",
        )
    return model_response(
        OperatorHealth(
            status="ok",
            watching=state.watching,
            inference_services=len(reconciler.phases),
            uptime_s=round(time.monotonic() - state.started, 3),
        )
    )


async def get_metrics(request: web.Request) -> web.Response:
    return metrics_handler(request.app[OPERATOR].prometheus)


ROUTES = (
    Route(
        "GET",
        "/health",
        get_health,
        "The operator's health",
        description="200 once kopf has started and logged in to the Kubernetes API; 503 before.",
        response=OperatorHealth,
        errors={503: "Still starting."},
    ),
    Route("GET", "/metrics", get_metrics, "Prometheus metrics", response_media="text/plain"),
)


def create_app(
    *,
    reconciler: Reconciler,
    ready: asyncio.Event,
    prometheus: CollectorRegistry,
    watching: list[str],
) -> web.Application:
    app = make_app(title="llmsvc operator", version=__version__, routes=ROUTES)
    app[OPERATOR] = OperatorState(
        reconciler=reconciler, ready=ready, prometheus=prometheus, watching=watching
    )
    return app
