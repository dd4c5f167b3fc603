"""``create_app`` of the simulated engine: routes, state, middlewares, background work."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from llmsvc import __version__
from llmsvc.core.app import Route, background, make_app
from llmsvc.core.errors import Handler, ServiceUnavailable
from llmsvc.core.jsonio import json_response
from llmsvc.core.metrics import metrics_handler
from llmsvc.core.wire import (
    MULTIPART,
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    ModelList,
    RerankRequest,
    ResponsesRequest,
    ScoreRequest,
    TokenizeRequest,
    TranscriptionRequest,
)
from llmsvc.simengine import endpoints, openai, sleep
from llmsvc.simengine.engine import Engine
from llmsvc.simengine.settings import SimEngineSettings
from llmsvc.simengine.state import SIMENGINE, Readiness, SimEngineState

ENGINE_HEADER = "X-Llmsvc-Engine"
ALWAYS_SERVED = frozenset({"/health", "/metrics", "/openapi.json"})
AWAKE_OR_ASLEEP = frozenset({*ALWAYS_SERVED, "/sleep", "/wake_up", "/is_sleeping"})
_ERRORS = {400: "invalid request", 404: "unknown model", 500: "simulated failure (--fail-rate)"}


async def health(request: web.Request) -> web.Response:
    state = request.app[SIMENGINE]
    engine = state.engine
    if not state.readiness.ready():
        raise ServiceUnavailable("Model is loading", code="loading")
    request.app[sleep.SLEEP].check_awake()
    return json_response({"status": "ok", "engine_id": engine.engine_id, "models": engine.models})


async def metrics(request: web.Request) -> web.Response:
    return metrics_handler(request.app[SIMENGINE].registry)


@web.middleware
async def loading_gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """503 on the API until the simulated model has "loaded" (``--startup-delay``), and while
    it sleeps (:mod:`.sleep`)."""
    if request.path not in ALWAYS_SERVED and not request.app[SIMENGINE].readiness.ready():
        raise ServiceUnavailable("Model is loading", code="loading")
    if request.path not in AWAKE_OR_ASLEEP:
        request.app[sleep.SLEEP].check_awake()
    return await handler(request)


def routes() -> list[Route]:
    table = [Route("GET", "/health", health, "200 once the model is loaded, 503 before")]
    table.append(Route("GET", "/metrics", metrics, "Prometheus, with vLLM's metric names"))
    table += [
        Route(
            "POST", "/sleep", sleep.sleep,
            "Sleep (vLLM's sleep mode; ?level=1|2): caches dropped, 503 until woken",
            errors={400: "level not 1 or 2", 409: "requests running or waiting, or waking"},
        ),
        Route("POST", "/wake_up", sleep.wake_up, "Wake up: answers once awake (--wake-delay)"),
        Route("GET", "/is_sleeping", sleep.is_sleeping, "{\"is_sleeping\": bool}"),
    ]  # fmt: skip
    for prefix in ("/v1", ""):
        table += [
            Route(
                "GET", f"{prefix}/models", openai.list_models, "Served models",
                response=ModelList,
            ),
            Route(
                "POST", f"{prefix}/chat/completions", openai.chat_completions,
                "Chat completion (SSE when stream is true)",
                request=ChatCompletionRequest, errors=_ERRORS,
            ),
            Route(
                "POST", f"{prefix}/completions", openai.completions,
                "Text completion (SSE when stream is true)",
                request=CompletionRequest, errors=_ERRORS,
            ),
            Route(
                "POST", f"{prefix}/embeddings", openai.embeddings,
                "Deterministic unit-vector embeddings",
                request=EmbeddingRequest, errors=_ERRORS,
            ),
        ]  # fmt: skip
    table += _more_endpoints()
    return table


def _more_endpoints() -> list[Route]:
    """The other model-addressed endpoints engines serve (:mod:`.endpoints`), where vLLM
    serves them."""
    more: list[tuple[str, Handler, str, type[BaseModel]]] = [
        ("/v1/responses", endpoints.responses, "Responses API (events when stream is true)",
         ResponsesRequest),
        ("/v1/rerank", endpoints.rerank, "Documents ranked against a query", RerankRequest),
        ("/rerank", endpoints.rerank, "Documents ranked against a query", RerankRequest),
        ("/v2/rerank", endpoints.rerank, "Documents ranked against a query", RerankRequest),
        ("/v1/score", endpoints.score, "Scores of text pairs", ScoreRequest),
        ("/score", endpoints.score, "Scores of text pairs", ScoreRequest),
        ("/tokenize", endpoints.tokenize, "The simulated token ids of a prompt",
         TokenizeRequest),
        ("/detokenize", endpoints.detokenize, "Token ids as text", DetokenizeRequest),
    ]  # fmt: skip
    table = [
        Route("POST", path, fn, summary, request=body, errors=_ERRORS)
        for path, fn, summary, body in more
    ]
    table.append(
        Route(
            "POST",
            "/v1/audio/transcriptions",
            endpoints.transcriptions,
            "A fixed transcript of the uploaded file",
            request=TranscriptionRequest,
            request_media=MULTIPART,
            response_media=("application/json", "text/plain"),
            errors=_ERRORS,
        )
    )
    return table


def create_app(
    settings: SimEngineSettings, *, registry: CollectorRegistry | None = None
) -> web.Application:
    """The simulated engine's application (metrics on ``registry``, a fresh one by default)."""
    registry = registry if registry is not None else CollectorRegistry()
    app = make_app(
        title="llmsvc simulated engine",
        version=__version__,
        routes=routes(),
        middlewares=[loading_gate],
        read_timeout=settings.read_timeout,
    )
    engine = Engine(settings, registry=registry)
    app[SIMENGINE] = SimEngineState(
        engine=engine,
        registry=registry,
        readiness=Readiness(startup_delay=settings.startup_delay),
        started=int(time.time()),
    )
    app[sleep.SLEEP] = sleep.SleepState(wake_delay=settings.wake_delay * settings.time_scale)

    async def engine_header(_: web.Request, response: web.StreamResponse) -> None:
        response.headers[ENGINE_HEADER] = engine.engine_id

    async def start_loading(app: web.Application) -> AsyncIterator[None]:
        app[SIMENGINE].readiness.start()
        yield

    app.on_response_prepare.append(engine_header)
    app.cleanup_ctx.append(start_loading)
    app.cleanup_ctx.append(background("sim-engine-steps", lambda _: engine.run_steps()))
    return app
