"""The study's phases over real processes: registry, routers, propagation, load, health checks."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from benchmarks.common.ports import free_port
from benchmarks.common.processes import Child
from benchmarks.common.procfs import rss_mib
from benchmarks.scale.measure import (
    MODEL,
    Watchers,
    backend_records,
    list_cost,
    other_records,
    propagation,
    register_all,
)
from benchmarks.scale.processes import Children, wait_http

from llmsvc.bench.load import LoadSpec, run_load

HOST = "127.0.0.1"
_T0 = time.monotonic()


def say(message: str) -> None:
    """Progress on stderr, with the seconds since the study started."""
    print(f"[{time.monotonic() - _T0:7.1f} s] {message}", file=sys.stderr, flush=True)


def mib(n: int) -> float:
    return round(n / 2**20, 1)


def rss(child: Child) -> float:
    """The child's resident memory in MiB (one decimal)."""
    return round(rss_mib(child.pid), 1)


async def start_registry(
    children: Children,
    session: aiohttp.ClientSession,
    *,
    name: str = "registry",
    health_interval: float = 3600,
) -> tuple[Child, str]:
    """A registry whose records never expire and that caps neither records nor the
    registration rate; health checks every ``health_interval`` s.

    A free port can be taken by another process (a parallel test) before the
    registry binds it; that other server may answer ``/health`` while ours exits.
    So the registry must still run a moment after its port answered, else it is
    started again on another port.
    """
    for _ in range(3):
        port = free_port()
        child = await children.llmsvc(
            name, "registry", "--port", str(port), "--heartbeat-ttl", "86400",
            "--health-interval", str(health_interval), "--log-level", "warning",
            # The study registers every record from one client as fast as it can: the
            # registry's capacity is measured, not its caps (docs/registry.md).
            "--max-records", "10000000", "--max-registrations-per-second", "0",
            "--allow-anonymous-writes",  # one trusted client on 127.0.0.1
        )  # fmt: skip
        url = f"http://{HOST}:{port}"
        try:
            await wait_http(session, child, f"{url}/health")
            await asyncio.sleep(0.5)
        except RuntimeError:
            if child.process.returncode is None:
                raise  # alive but not ready: a real failure
        if child.process.returncode is None:
            return child, url
        say(f"{name} lost port {port} to another process; starting it again")
    raise RuntimeError(f"{name}: could not keep a free port three times")


async def start_router(
    children: Children, session: aiohttp.ClientSession, name: str, *args: str, backends: int
) -> tuple[Child, str, float]:
    """A router, once its ``/health`` counts ``backends`` healthy, and how long that took."""
    port = free_port()
    started = time.monotonic()
    child = await children.llmsvc(
        name, "router", "--port", str(port), "--log-level", "warning", *args
    )
    url = f"http://{HOST}:{port}"
    await wait_http(session, child, f"{url}/health")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        async with session.get(f"{url}/health") as resp:
            if (await resp.json())["healthy_backends"] >= backends:
                return child, url, time.monotonic() - started
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{name}: fewer than {backends} healthy backends after 120 s")


async def load(url: str, args: Any) -> dict[str, Any]:
    """``run_load`` against ``url``: non-streaming, one output token, the study's size."""
    spec = LoadSpec(
        url=url, model=MODEL, concurrency=args.concurrency, requests=args.requests, max_tokens=1
    )
    summary = (await run_load(spec)).summary()
    return {k: summary[k] for k in ("requests", "requests_per_s", "latency_s", "errors")}


async def registry_phase(
    args: Any, children: Children, session: aiohttp.ClientSession, ports: list[int]
) -> tuple[Child, str, dict[str, Any]]:
    """The registry and its records: registration time, memory, the cost of one list."""
    registry, url = await start_registry(children, session)
    result: dict[str, Any] = {"rss_empty_mib": rss(registry)}
    records = backend_records(ports, args.backends)
    records += other_records(ports, args.records - args.backends)
    seconds = await register_all(session, url, records, workers=16)
    result |= {"records": len(records), "registration_s": round(seconds, 2)}
    result["rss_records_mib"] = rss(registry)
    result["list_all_s"] = await list_cost(session, url, "", 5)
    result["list_openai_api_s"] = await list_cost(session, url, "type=openai-api", 5)
    return registry, url, result


WATCHER_SETUPS = (("none", None), ("type=openai-api", "type=openai-api"), ("all records", ""))


async def propagation_phase(
    args: Any,
    session: aiohttp.ClientSession,
    registry: Child,
    registry_url: str,
    router_url: str,
    probe_port: int,
) -> list[dict[str, Any]]:
    """Propagation to one router with no other watcher, then with ``--watchers`` of each kind."""
    results = []
    for label, query in WATCHER_SETUPS:
        if query is not None and not args.watchers:
            continue
        say(f"propagation, other watchers: {label}")
        watchers = Watchers(session, registry_url, args.watchers if query is not None else 0)
        watchers.query = query or ""
        async with session.get(f"{registry_url}/health") as resp:
            await watchers.start(int((await resp.json())["index"]))
        entry: dict[str, Any] = {"watchers": watchers.count, "watch": label}
        entry["registry_rss_mib"] = rss(registry)
        try:
            entry |= await propagation(
                session, registry_url, router_url, probe_port, args.rounds,
                settle=watchers.settle,
            )  # fmt: skip
        finally:
            await watchers.stop()
        entry |= {"answers": watchers.answers, "mib_read": mib(watchers.bytes_read)}
        entry["registry_rss_after_mib"] = rss(registry)
        results.append(entry)
    return results


async def router_phase(
    args: Any,
    children: Children,
    session: aiohttp.ClientSession,
    registry_url: str,
    strategy: str,
) -> tuple[dict[str, Any], Child | None, str]:
    """A router over the registry's backends: time to sync, memory, the proxy under load.

    The router is returned still running (the caller measures propagation, then stops it).
    """
    name = f"router-{strategy}"
    say(f"{name}: start and sync {args.backends} backends, then load")
    try:
        router, url, ready_s = await start_router(
            children, session, name, "--registry-url", registry_url, "--strategy", strategy,
            backends=args.backends,
        )  # fmt: skip
    except RuntimeError as exc:
        return {"strategy": strategy, "skipped": str(exc).splitlines()[-1][:300]}, None, ""
    entry: dict[str, Any] = {"strategy": strategy, "ready_s": round(ready_s, 2)}
    entry["rss_mib"] = rss(router)
    entry["load"] = await load(url, args)
    entry["rss_after_load_mib"] = rss(router)
    return entry, router, url


async def baseline_phase(
    args: Any, children: Children, session: aiohttp.ClientSession, port: int
) -> dict[str, Any]:
    """The same load through a router over one static backend, and to the backend directly."""
    say("baseline: router over one backend, the backend directly")
    static = Path(children.log_dir) / "one-backend.json"
    static.write_text(json.dumps(backend_records([port], 1)))
    router, url, _ = await start_router(
        children, session, "router-one", "--static-services", str(static), backends=1
    )
    through_one = await load(url, args)
    memory = rss(router)
    await children.stop(router)
    return {
        "router_one_backend": through_one | {"rss_mib": memory},
        "direct": await load(f"http://{HOST}:{port}", args),
    }


async def health_phase(
    args: Any, children: Children, session: aiohttp.ClientSession, ports: list[int]
) -> dict[str, Any]:
    """A second registry with the same records and health checks every few seconds.

    Every record points at a port that answers ``/health`` at once, so every
    check should pass: the records it marks unhealthy are false negatives.
    """
    interval = args.health_round
    say(f"health round: checks every {interval:g} s")
    registry, url = await start_registry(
        children, session, name="registry-health", health_interval=interval
    )
    records = backend_records(ports, args.backends)
    records += other_records(ports, args.records - args.backends)
    await register_all(session, url, records, workers=16)
    started = time.monotonic()
    checks = await _checks_done(session, url)
    while checks < 2 * len(records) and time.monotonic() - started < interval * 3 + 60:
        await asyncio.sleep(0.2)  # two whole rounds: each record checked twice
        checks = await _checks_done(session, url)
    async with session.get(f"{url}/stats") as resp:
        stats = await resp.json()
    await children.stop(registry)
    return {
        "records": len(records),
        "health_interval_s": interval,
        "checks": checks,
        "healthy": stats["healthy"],
        "unhealthy": stats["unhealthy"],
    }


async def _checks_done(session: aiohttp.ClientSession, registry: str) -> float:
    """Health checks the registry has finished, from its Prometheus counter."""
    async with session.get(f"{registry}/metrics") as resp:
        text = await resp.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("llmsvc_registry_health_checks_total")
    )
