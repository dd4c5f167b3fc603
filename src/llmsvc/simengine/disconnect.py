"""Cancel the handler of a request whose client went away.

aiohttp does not cancel handlers when a connection drops (its
``handler_cancellation`` is off), and a queued or non-streaming request writes
nothing that would notice. One background task checks the watched requests'
transports every ``interval`` seconds and cancels the handler of a closed
one, so its running slot and KV reservation are freed at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web

CHECK_INTERVAL = 0.05


class DisconnectWatcher:
    def __init__(self, *, interval: float = CHECK_INTERVAL) -> None:
        self.interval = interval
        self._watched: dict[asyncio.Task[object], web.BaseRequest] = {}

    @contextmanager
    def watch(self, request: web.BaseRequest) -> Iterator[None]:
        """Watch ``request`` for the body of the ``with``; its handler task is cancelled."""
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - handlers always run in a task
            yield
            return
        self._watched[task] = request
        try:
            yield
        finally:
            self._watched.pop(task, None)

    def check(self) -> None:
        for task, request in list(self._watched.items()):
            transport = request.transport
            if transport is None or transport.is_closing():
                del self._watched[task]
                task.cancel()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.check()
