"""Whether a starting router knows its backends yet (``GET /health`` and held requests).

A router that served before its first registry sync answered 503 to every request
of its first milliseconds, and one whose static backends were not yet checked sent
requests to backends that were down. So until each part it waits for has reported
(``registry``: the first sync; ``static services``: the first active check), the
router is *starting*: ``/health`` answers 503 and routed requests wait here. After
``--ready-timeout`` seconds it is ready anyway and serves what it has (the static
services alone while the registry is unreachable), with a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable

log = logging.getLogger("llmsvc.router.readiness")

REGISTRY = "registry"
STATIC = "static services"

_TIMER_SLACK_S = 0.001  # how early the loop may wake a timed wait


class Readiness:
    """The parts a starting router waits for; ready when all are done or time is up."""

    def __init__(self, parts: Iterable[str], *, timeout: float) -> None:
        self.timeout = timeout
        self._waiting = list(dict.fromkeys(parts))
        self._ready = asyncio.Event()
        self._deadline = time.monotonic() + timeout
        if not self._waiting:
            self._ready.set()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def waiting_for(self) -> list[str]:
        """The parts not done yet, in the order given."""
        return list(self._waiting)

    def done(self, part: str) -> None:
        """``part`` has reported (again, after the first time, is a no-op)."""
        if part not in self._waiting:
            return
        self._waiting.remove(part)
        if not self._waiting and not self.ready:
            log.info("ready: first registry sync and static checks done")
            self._ready.set()

    async def expire(self) -> None:
        """Sleep until ``timeout`` after start, then be ready with whatever is known."""
        await asyncio.sleep(max(0.0, self._deadline - time.monotonic()))
        self._give_up()

    async def wait(self, limit: float) -> bool:
        """Wait until ready, at most ``limit`` seconds; whether it is ready."""
        if self.ready:
            return True
        left = min(limit, self._deadline - time.monotonic())
        if left > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), left)
        if time.monotonic() >= self._deadline - _TIMER_SLACK_S:
            self._give_up()  # the timeout has passed, whichever of the two woke first
        return self.ready

    def _give_up(self) -> None:
        if not self.ready:
            log.warning(
                "not ready after %.1fs (still waiting for %s): serving what is known",
                self.timeout,
                ", ".join(self._waiting),
            )
            self._ready.set()
