"""vLLM's sleep mode, simulated: ``POST /sleep``, ``POST /wake_up``, ``GET /is_sleeping``.

A babysitter with ``--standby sleep`` puts an idle engine to sleep instead of
stopping it, so that waking costs ``--wake-delay`` rather than a whole model
load. The names and answers are vLLM's (its dev-mode endpoints, served with
``--enable-sleep-mode`` and ``VLLM_SERVER_DEV_MODE=1``): level 1 offloads the
weights to CPU memory and drops the KV cache, level 2 drops the weights too.
Either way the simulated KV and prefix caches are emptied, so the first
requests after a wake prefill in full, as they would on vLLM.

While asleep ``/health`` and the API answer 503 (code ``engine_sleeping``),
and the metrics show nothing running. A sleep asked while requests run or
wait is refused (409): the caller saw the engine idle a moment ago and should
look again, rather than cut those requests off.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web

from llmsvc.core.errors import ApiError, BadRequest, ServiceUnavailable
from llmsvc.core.jsonio import json_response
from llmsvc.simengine.engine import Engine
from llmsvc.simengine.state import SIMENGINE

SLEEP_LEVELS = frozenset({1, 2})


class EngineBusy(ApiError):
    status = 409


@dataclass(slots=True)
class SleepState:
    """Whether the engine sleeps, and the wake in progress, if any."""

    wake_delay: float  # seconds a wake takes (already multiplied by --time-scale)
    level: int = 0  # 0 awake, else the level it was put to sleep at
    _waking: asyncio.Task[None] | None = field(default=None)

    @property
    def asleep(self) -> bool:
        return self.level != 0

    def check_awake(self) -> None:
        if self.asleep:
            raise ServiceUnavailable(
                "The engine is sleeping (POST /wake_up to wake it)", code="engine_sleeping"
            )

    def sleep(self, engine: Engine, level: int) -> None:
        scheduler = engine.scheduler
        if scheduler.running or scheduler.waiting:
            raise EngineBusy(
                f"Cannot sleep with {scheduler.running} requests running and "
                f"{scheduler.waiting} waiting",
                code="engine_busy",
            )
        if self._waking is not None:
            raise EngineBusy("Cannot sleep while waking up", code="engine_waking")
        engine.prefix_cache.clear()
        self.level = max(self.level, level)

    async def wake(self) -> None:
        """Return once awake; concurrent callers share one wake."""
        if not self.asleep:
            return
        if self._waking is None:
            self._waking = asyncio.create_task(self._wake_after_delay())
        await asyncio.shield(self._waking)

    async def _wake_after_delay(self) -> None:
        await asyncio.sleep(self.wake_delay)
        self.level = 0
        self._waking = None


SLEEP = web.AppKey("simengine-sleep", SleepState)


def _level(request: web.Request) -> int:
    raw = request.query.get("level", "1")
    try:
        level = int(raw)
    except ValueError:
        level = 0
    if level not in SLEEP_LEVELS:
        raise BadRequest(
            f"level must be 1 or 2, not {raw[:32]!r}", param="level", code="invalid_value"
        )
    return level


async def sleep(request: web.Request) -> web.Response:
    level = _level(request)
    request.app[SLEEP].sleep(request.app[SIMENGINE].engine, level)
    return web.Response(status=200)


async def wake_up(request: web.Request) -> web.Response:
    await request.app[SLEEP].wake()
    return web.Response(status=200)


async def is_sleeping(request: web.Request) -> web.Response:
    return json_response({"is_sleeping": request.app[SLEEP].asleep})
