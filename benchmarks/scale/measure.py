"""What the study measures: balancer cost in-process, registration, watchers, propagation."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from llmsvc.bench.schedule import Schedule, drive
from llmsvc.bench.stats import distribution
from llmsvc.core.records import OPENAI_API, ServiceRecord
from llmsvc.router.backends import BackendPool
from llmsvc.router.balancing import make_strategy

MODEL = "scale-model"
OTHER_TYPE = "worker"  # a record type the router never routes to


# --- decision time, in-process with the router's own pool and strategies ---------------------


def backend_records(ports: Sequence[int], count: int) -> list[dict[str, Any]]:
    """``count`` routable records, spread over the listener's ``ports``."""
    return [
        {
            "name": f"backend-{i:05d}",
            "host": "127.0.0.1",
            "port": ports[i % len(ports)],
            "type": OPENAI_API,
            "metadata": {"models": [MODEL]},
        }
        for i in range(count)
    ]


def other_records(ports: Sequence[int], count: int) -> list[dict[str, Any]]:
    """``count`` records the router ignores (another type), also on the listener's ports."""
    return [
        {
            "name": f"record-{i:05d}",
            "host": "127.0.0.1",
            "port": ports[i % len(ports)],
            "type": OTHER_TYPE,
            "metadata": {"models": [f"other-{i % 50}"]},
        }
        for i in range(count)
    ]


def _make_strategy(name: str, pool: BackendPool) -> Any:
    """The router's strategy ``name`` over ``pool``: ValueError when this version lacks it.

    Written against both signatures of ``make_strategy`` (``(name)`` before the
    strategies that hash over the pool's members, ``(settings, members)`` since).
    """
    if "members" not in inspect.signature(make_strategy).parameters:
        return make_strategy(name)  # type: ignore[call-arg, arg-type]
    from llmsvc.router.settings import RouterSettings

    return make_strategy(RouterSettings(strategy=name), pool)


def _picker(strategy: Any) -> Callable[[list[Any], str], Any]:
    if "key" in inspect.signature(strategy.pick).parameters:
        return lambda candidates, key: strategy.pick(MODEL, candidates, key)
    return lambda candidates, key: strategy.pick(MODEL, candidates)


def decision_time(strategy_name: str, backends: int, iterations: int) -> dict[str, Any]:
    """Mean µs of what the router does per request to choose: ``eligible`` then ``pick``.

    Keyed strategies (ip_hash, session, prefix_affinity) get one of 1,000 keys
    in turn; extracting the key from the request is not included. Three
    decisions before the timing build what a strategy caches (rings, schedules):
    the steady state between two changes of the pool is measured.
    """
    entry: dict[str, Any] = {"strategy": strategy_name, "backends": backends}
    pool = BackendPool(max_fails=3, fail_timeout=30.0)
    fake_ports = list(range(20000, 20000 + backends))
    pool.set_registry(
        ServiceRecord.model_validate(r) for r in backend_records(fake_ports, backends)
    )
    try:
        pick = _picker(_make_strategy(strategy_name, pool))
    except (ValueError, TypeError) as exc:
        return entry | {"skipped": str(exc)}
    rng = random.Random(0)
    for backend in pool:
        backend.in_flight = rng.randrange(4)  # some load, so ties are not the whole pool
    keys = [f"key-{i}" for i in range(1000)]
    now = time.monotonic()
    for key in keys[:3]:  # warm up: rings, caches and schedules are built on first uses
        pick(pool.eligible(MODEL, now), key)
    started = time.perf_counter()
    for i in range(iterations):
        pick(pool.eligible(MODEL, now), keys[i % 1000])
    per_decision = (time.perf_counter() - started) / iterations
    started = time.perf_counter()
    for _ in range(iterations):
        pool.eligible(MODEL, now)
    per_filter = (time.perf_counter() - started) / iterations
    return entry | {
        "iterations": iterations,
        "decision_us": round(per_decision * 1e6, 2),
        "of_which_eligible_us": round(per_filter * 1e6, 2),
    }


# --- the registry: bulk registration and blocking-query watchers -----------------------------


async def register_all(
    session: aiohttp.ClientSession, registry: str, records: Sequence[dict[str, Any]], workers: int
) -> float:
    """POST every record (``workers`` at a time, on the load loop); the seconds it took."""

    async def register(n: int) -> None:
        record = records[n]
        async with session.post(f"{registry}/services", json=record) as resp:
            if resp.status not in (200, 201):
                raise RuntimeError(f"registering {record['name']}: {resp.status}")
            await resp.read()

    driven = await drive(Schedule(concurrency=workers, requests=len(records)), register)
    return driven.elapsed_s


async def list_cost(
    session: aiohttp.ClientSession, registry: str, query: str, times: int
) -> dict[str, float] | None:
    """Seconds one plain ``GET /services?<query>`` takes, ``times`` times in a row."""
    seconds = []
    for _ in range(times):
        started = time.monotonic()
        async with session.get(f"{registry}/services?{query}") as resp:
            await resp.read()
        seconds.append(time.monotonic() - started)
    return distribution(seconds)


@dataclass
class Watchers:
    """``count`` clients each holding a blocking query on ``GET /services?<query>``."""

    session: aiohttp.ClientSession
    registry: str
    count: int
    query: str = ""
    wait: str = "30s"
    answers: int = 0
    bytes_read: int = 0
    errors: int = 0
    indexes: list[int] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    answered: asyncio.Event = field(default_factory=asyncio.Event)

    async def _watch(self, me: int) -> None:
        while True:
            try:
                url = f"{self.registry}/services?{self.query}&index={self.indexes[me]}"
                async with self.session.get(f"{url}&wait={self.wait}") as resp:
                    body = await resp.read()  # read, not parsed: the registry's cost is measured
                    index = int(resp.headers.get("X-Llmsvc-Index", self.indexes[me]))
                self.answers += 1
                self.bytes_read += len(body)
                self.indexes[me] = index
                self.answered.set()
            except (aiohttp.ClientError, OSError, TimeoutError):
                self.errors += 1
                await asyncio.sleep(0.5)

    async def start(self, index: int) -> None:
        """Start blocked at ``index`` (the registry's current one)."""
        self.indexes = [index] * self.count
        self.tasks = [asyncio.create_task(self._watch(i)) for i in range(self.count)]
        await asyncio.sleep(0.5)

    async def settle(self, index: int, timeout: float = 300.0) -> None:
        """Wait until every watcher has been answered ``index`` (and blocks again)."""
        deadline = time.monotonic() + timeout
        while self.indexes and min(self.indexes) < index:
            self.answered.clear()  # no await since the check: no answer can be missed
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.answered.wait(), remaining)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.tasks = []


# --- propagation of a change to the router ---------------------------------------------------


async def _routes(session: aiohttp.ClientSession, router: str, model: str) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    async with session.post(f"{router}/v1/chat/completions", json=body) as resp:
        await resp.read()
        return resp.status


async def _until_status(
    session: aiohttp.ClientSession, router: str, model: str, status: int, timeout: float
) -> float | None:
    """Seconds until a request for ``model`` gets ``status`` (polled every 5 ms); None: never."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if await _routes(session, router, model) == status:
            return time.monotonic() - started
        await asyncio.sleep(0.005)
    return None


async def _change(
    session: aiohttp.ClientSession, method: str, url: str, **kw: Any
) -> tuple[int, dict[str, Any]]:
    """One write to the registry; the change index and the JSON body it answers with."""
    async with session.request(method, url, **kw) as resp:
        body = await resp.json()
        if resp.status >= 400:
            raise RuntimeError(f"{method} {url}: {resp.status}")
        return int(resp.headers.get("X-Llmsvc-Index", "0")), body


async def propagation(
    session: aiohttp.ClientSession,
    registry: str,
    router: str,
    port: int,
    rounds: int,
    *,
    settle: Callable[[int], Awaitable[None]] | None = None,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Register then deregister a backend for a model of its own; time until routing follows.

    ``settle(index)`` is awaited after each change (the other watchers catch up),
    so that a change is measured on a quiet registry.
    """
    added: list[float | None] = []
    removed: list[float | None] = []
    for i in range(rounds):
        name, model = f"probe-{i}", f"probe-model-{i}"
        record = {"name": name, "host": "127.0.0.1", "port": port, "metadata": {"models": [model]}}
        started = time.monotonic()
        index, registered = await _change(session, "POST", f"{registry}/services", json=record)
        seen = await _until_status(session, router, model, 200, timeout)
        added.append(None if seen is None else time.monotonic() - started)
        if settle is not None:
            await settle(index)
        started = time.monotonic()
        lease = {"X-Llmsvc-Lease": registered["lease"]}  # the name's holder removes it
        index, _ = await _change(session, "DELETE", f"{registry}/services/{name}", headers=lease)
        gone = await _until_status(session, router, model, 404, timeout)  # unknown again
        removed.append(None if gone is None else time.monotonic() - started)
        if settle is not None:
            await settle(index)
    return {"rounds": rounds, "add_s": _delays(added), "remove_s": _delays(removed)}


def _delays(values: list[float | None]) -> dict[str, Any]:
    seen = [v for v in values if v is not None]
    return {"missed": len(values) - len(seen), **(distribution(seen) or {})}
