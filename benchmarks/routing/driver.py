"""A small asyncio load driver: streamed chat requests, TTFT from the first content chunk.

Each simulated client has its own source address on the loopback network
(127.0.0.2, 127.0.0.3, ...), so ``ip_hash`` sees many clients, as in front of
real users. :func:`open_loop` sends at planned instants whatever the answers
do (Poisson or bursts); :func:`closed_loop` keeps a fixed number of requests
in flight (only to measure capacity). With several routers in front of the
same engines, each request goes to one drawn at random (:class:`Targets`).
Both run on ``llmsvc bench``'s load loop (:func:`llmsvc.bench.schedule.drive`);
the request is this module's.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
import orjson

from llmsvc.bench.schedule import Schedule, drive

from .workloads import Request, Workload

REQUEST_TIMEOUT_S = 120.0


@dataclass(slots=True)
class Sample:
    """What one request saw. ``sent`` and ``lateness`` are seconds from the run's start."""

    sent: float
    prompt_tokens: int
    status: int = 0
    """HTTP status; 0 for a connection error, -1 for a request still running at the end."""
    ttft: float | None = None
    latency: float | None = None
    tokens: int = 0
    backend: str = ""
    lateness: float = 0.0
    router: int = 0
    """Which of the stack's routers it was sent to."""

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.latency is not None


def client_address(index: int) -> str:
    return f"127.0.{(index + 2) // 256}.{(index + 2) % 256}"


class Targets:
    """The URL request ``n`` is sent to: one of ``urls``, drawn at random, seeded.

    The ``n``-th draw depends on ``seed`` and ``n`` only, not on the order in
    which requests ask, so every strategy of a run sends request ``n`` to the
    same router: the hard case for agreement, a session's turns landing on
    different routers, is the same for all of them.
    """

    def __init__(self, urls: Sequence[str], seed: str) -> None:
        if not urls:
            raise ValueError("no router to send to")
        self.urls = list(urls)
        self._rng = random.Random(seed)
        self._draws: list[int] = []

    def index(self, n: int) -> int:
        """Which of ``urls`` request ``n`` goes to."""
        if len(self.urls) == 1:
            return 0
        while len(self._draws) <= n:
            self._draws.append(self._rng.randrange(len(self.urls)))
        return self._draws[n]

    def __call__(self, n: int) -> str:
        return self.urls[self.index(n)]


class Clients:
    """One connection pool per simulated client address."""

    def __init__(self, count: int) -> None:
        self._sessions = [
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, local_addr=(client_address(i), 0)),
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
            )
            for i in range(count)
        ]

    def __getitem__(self, index: int) -> aiohttp.ClientSession:
        return self._sessions[index % len(self._sessions)]

    async def close(self) -> None:
        for session in self._sessions:
            await session.close()


async def send(clients: Clients, url: str, request: Request, sample: Sample) -> str | None:
    """Send ``request``, fill ``sample`` in; the reply's text, or None when it failed."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    parts: list[str] = []
    headers = {"Content-Type": "application/json", **request.headers}
    try:
        async with clients[request.client].post(url, data=request.body, headers=headers) as resp:
            sample.backend = resp.headers.get("X-Llmsvc-Backend", "")
            if resp.status != 200:
                await resp.read()
                sample.status = resp.status
                return None
            async for line in resp.content:
                if not line.startswith(b"data: "):
                    continue
                data = line[6:].strip()
                if data == b"[DONE]":
                    sample.status = 200
                    break
                content = _content(orjson.loads(data))
                if content is None:
                    continue
                if sample.ttft is None:
                    sample.ttft = loop.time() - start
                sample.tokens += 1
                parts.append(content)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        sample.status = 0
        return None
    if sample.status != 200:  # a stream that ended without [DONE] (an in-band error)
        sample.status = 502
        return None
    sample.latency = loop.time() - start
    return "".join(parts)


def _content(chunk: object) -> str | None:
    if not isinstance(chunk, dict):
        return None
    if "error" in chunk:
        raise ValueError(str(chunk["error"]))
    choices = chunk.get("choices") or []
    if not choices:
        return None
    content = choices[0].get("delta", {}).get("content")
    return content if isinstance(content, str) and content else None


async def open_loop(
    clients: Clients, targets: Targets, workload: Workload, times: list[float], *, drain_s: float
) -> list[Sample]:
    """Send one request of ``workload`` at each offset of ``times``; wait ``drain_s`` at most.

    Requests still running after the drain are cancelled and kept with status -1.
    """
    loop = asyncio.get_running_loop()
    samples: list[Sample] = []
    stop = asyncio.Event()

    async def one(n: int) -> None:
        request = workload.next()
        sample = Sample(sent=times[n], prompt_tokens=request.prompt_tokens, router=targets.index(n))
        sample.lateness = loop.time() - t0 - times[n]
        samples.append(sample)
        try:
            reply = await send(clients, targets(n), request, sample)
        except asyncio.CancelledError:
            sample.status = -1
            raise
        workload.done(request, reply)

    t0 = loop.time()
    drained = loop.call_at(t0 + (times[-1] if times else 0.0) + drain_s, stop.set)
    try:
        await drive(Schedule(arrivals=times), one, stop=stop)
    finally:
        drained.cancel()
    return samples


async def closed_loop(
    clients: Clients,
    targets: Targets,
    workload: Workload,
    *,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
) -> tuple[float, int]:
    """Completed requests per second with ``concurrency`` always in flight, and errors."""
    loop = asyncio.get_running_loop()
    start = loop.time() + warmup_s
    stop = start + duration_s

    async def one(n: int) -> tuple[bool, float]:
        request = workload.next()
        sample = Sample(sent=0.0, prompt_tokens=request.prompt_tokens)
        reply = await send(clients, targets(n), request, sample)
        workload.done(request, reply)
        return sample.ok, loop.time()

    schedule = Schedule(concurrency=concurrency, duration=warmup_s + duration_s)
    driven = await drive(schedule, one)
    errors = sum(not ok for ok, _ in driven.results)
    completed = sum(ok and start <= at <= stop for ok, at in driven.results)
    return completed / duration_s, errors
