"""The one load loop: ``concurrency`` clients, each sending one request after another.

:func:`drive` owns the schedule, not the request: it calls ``send(n)`` for
tickets ``n = 0, 1, 2, ...`` from ``concurrency`` clients at once (a closed
loop: a client sends its next request when the last one is answered, after
``pause`` seconds), until ``requests`` tickets are used up, ``duration``
seconds have passed, or an event says so. With ``arrivals`` it is an open
loop instead: request ``n`` is sent ``arrivals[n]`` seconds after the start,
whatever the answers do (Poisson arrivals, bursts). What ``send`` returns is collected
in the order the requests finish. :func:`llmsvc.bench.load.run_load` is this
loop with ``llmsvc bench``'s request; the harnesses pass their own ``send``
when they need to record more of each answer (which backend served it, how a
stream ended)::

    driven = await drive(Schedule(concurrency=8, requests=400), send, drain=done)

Two events end a run early: ``drain`` (no new requests; those in flight
finish and count, as at the end of ``duration``) and ``stop`` (requests in
flight are cancelled and not counted, and the run says ``interrupted``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

R = TypeVar("R")


@dataclass(frozen=True, slots=True, kw_only=True)
class Schedule:
    """How hard and for how long: neither ``requests`` nor ``duration`` runs until an event."""

    concurrency: int = 1
    requests: int | None = None
    """Requests to send in all (tickets ``0 .. requests - 1``)."""
    duration: float | None = None
    """Seconds to keep starting requests; those in flight at the end finish."""
    pause: float = 0.0
    """Seconds a client waits after an answer before its next request."""
    arrivals: Sequence[float] | None = None
    """Open loop: seconds from the start at which each request is sent (no concurrency cap)."""

    def __post_init__(self) -> None:
        if self.requests is not None and self.duration is not None:
            raise ValueError("a Schedule takes requests or duration, not both")
        if self.arrivals is not None and (self.requests, self.duration) != (None, None):
            raise ValueError("a Schedule with arrivals takes neither requests nor duration")


@dataclass(slots=True)
class Driven(Generic[R]):
    """What ``send`` returned for every finished request, in the order they finished."""

    results: list[R] = field(default_factory=list)
    elapsed_s: float = 0.0
    interrupted: bool = False


async def drive(
    schedule: Schedule,
    send: Callable[[int], Awaitable[R]],
    *,
    on_result: Callable[[R], None] | None = None,
    stop: asyncio.Event | None = None,
    drain: asyncio.Event | None = None,
) -> Driven[R]:
    """Run ``send`` as ``schedule`` says; ``on_result`` sees each result as it comes."""
    driven: Driven[R] = Driven()
    tickets = itertools.count()
    started = time.monotonic()
    deadline = started + schedule.duration if schedule.duration is not None else None
    draining = drain or asyncio.Event()

    def more(n: int) -> bool:
        if draining.is_set():
            return False
        if schedule.requests is not None and n >= schedule.requests:
            return False
        return deadline is None or time.monotonic() < deadline

    async def client() -> None:
        for n in tickets:
            if not more(n):
                return
            await one(n)
            if schedule.pause:
                await asyncio.sleep(schedule.pause)

    async def one(n: int) -> None:
        result = await send(n)
        driven.results.append(result)
        if on_result is not None:
            on_result(result)

    everything: asyncio.Future[Any]
    if schedule.arrivals is not None:
        everything = asyncio.ensure_future(_open_loop(schedule.arrivals, one, draining))
    else:
        clients = min(schedule.concurrency, schedule.requests or schedule.concurrency)
        everything = asyncio.gather(*(client() for _ in range(clients)))
    driven.interrupted = await _until_done_or(everything, stop or asyncio.Event())
    driven.elapsed_s = time.monotonic() - started
    return driven


async def _open_loop(
    arrivals: Sequence[float], one: Callable[[int], Awaitable[None]], drain: asyncio.Event
) -> None:
    """Start ``one(n)`` at ``arrivals[n]`` seconds from now; then wait for all of them."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    requests: list[asyncio.Task[None]] = []
    try:
        for n, at in enumerate(arrivals):
            delay = started + at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if drain.is_set():
                break
            requests.append(asyncio.ensure_future(one(n)))
        await asyncio.gather(*requests)
    finally:
        for request in requests:
            request.cancel()
        await asyncio.gather(*requests, return_exceptions=True)


async def _until_done_or(everything: asyncio.Future[Any], stop: asyncio.Event) -> bool:
    """Await ``everything``; when ``stop`` is set first, cancel it. True: it was cut short."""
    stopped: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([everything, stopped], return_when=asyncio.FIRST_COMPLETED)
    finally:
        interrupted = not everything.done()
        for task in (everything, stopped):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await everything
        with contextlib.suppress(asyncio.CancelledError):
            await stopped
    return interrupted
