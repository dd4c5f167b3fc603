"""Faults with real processes: an engine SIGKILLed under load, the registry restarted."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from functools import partial

import httpx

from procs import Spawn, pid_alive, registry_record, start_babysitter, start_registry, start_router
from procs import wait_until as wait
from traffic import BODY, CUT, MODEL, load


def test_engine_sigkilled_under_load(spawn: Spawn) -> None:
    _, registry = start_registry(spawn)
    engine_args = ("--time-scale", "0.05")  # ~0.01 s per request: real concurrency
    _, _, api_a = start_babysitter(spawn, registry, "engine-a", engine_args=engine_args)
    start_babysitter(spawn, registry, "engine-b", engine_args=engine_args)
    _, router = start_router(spawn, registry)
    wait(lambda: httpx.get(f"{router}/health").json()["healthy_backends"] == 2)
    victim = httpx.get(f"{api_a}/status").json()["pid"]

    seen: list[str] = []
    stop = threading.Event()

    def watch_registry() -> None:
        while not stop.is_set():
            record = registry_record(registry, "engine-a")
            seen.append(record["status"] if record else "absent")
            time.sleep(0.05)

    watcher = threading.Thread(target=watch_registry)
    watcher.start()

    results: list[int | str] = []

    def kill_under_load() -> None:
        wait(lambda: len(results) >= 100, timeout=30, what="a quarter of the load answered")
        os.kill(victim, signal.SIGKILL)

    killer = threading.Thread(target=kill_under_load)
    killer.start()
    try:
        asyncio.run(load(router, requests=400, concurrency=8, during=0.005, results=results))
    finally:
        killer.join()
    assert not pid_alive(victim)
    # No request fails: non-streaming ones and streams not yet started are retried on the
    # other engine. Streams already flowing from the killed engine cannot be retried; they
    # end with an error event a client can recognise (at most one per concurrent client).
    failures = [r for r in results if r not in (200, CUT)]
    assert failures == [], f"{len(failures)} of {len(results)} failed: {failures[:5]}"
    assert results.count(CUT) <= 8  # the concurrency: only requests in flight at the kill

    # The babysitter restarts the engine; in between the registry showed it unhealthy.
    status = wait(
        lambda: (
            (s := httpx.get(f"{api_a}/status").json())["state"] == "ready"
            and s["restarts"] >= 1
            and s
        ),
        timeout=20,
        what="engine-a restarted",
    )
    assert status["pid"] != victim
    wait(lambda: (registry_record(registry, "engine-a") or {}).get("status") == "healthy")
    stop.set()
    watcher.join()
    assert "unhealthy" in seen, f"registry never showed engine-a unhealthy: {set(seen)}"
    record = registry_record(registry, "engine-a")
    assert record is not None and record["status"] == "healthy"
    # And the router sends traffic to it again.
    wait(lambda: httpx.get(f"{router}/health").json()["healthy_backends"] == 2, timeout=10)


def test_registry_killed_and_restarted(spawn: Spawn) -> None:
    reg_proc, registry = start_registry(spawn)
    port = registry.rsplit(":", 1)[1]
    # Heartbeats every 2 s: the restarted registry stays empty that long.
    for name in ("engine-a", "engine-b"):
        start_babysitter(spawn, registry, name, "--heartbeat-interval", "2")
    _, router = start_router(spawn, registry)
    wait(lambda: httpx.get(f"{router}/health").json()["healthy_backends"] == 2)

    reg_proc.kill()
    # The router keeps routing on its last view: no error, both backends used.
    results = asyncio.run(load(router, requests=40, concurrency=4))
    assert results == [200] * 40
    backends = {
        httpx.post(f"{router}/v1/chat/completions", json=BODY).headers["x-llmsvc-backend"]
        for _ in range(4)
    }
    assert backends == {"engine-a", "engine-b"}

    # A new, empty registry on the same port: until the babysitters' next heartbeats
    # re-register everything, the router keeps serving on its last view.
    start_registry(spawn, name="registry-2", port=int(port))
    results = asyncio.run(load(router, requests=150, concurrency=2, during=0.02))
    assert results == [200] * 150
    for name in ("engine-a", "engine-b", "engine-a-babysitter", "engine-b-babysitter"):
        wait(partial(registry_record, registry, name), timeout=15, what=f"{name} re-registered")
    models = httpx.get(f"{registry}/services", params={"model": MODEL}).json()
    assert models["total"] == 2
    assert asyncio.run(load(router, requests=20, concurrency=4)) == [200] * 20
