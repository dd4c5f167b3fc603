"""Faults with real processes: an engine SIGKILLed under load, the registry restarted."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import httpx

from procs import pid_alive, registry_record, start_babysitter, start_registry, start_router
from procs import wait_until as wait

MODEL = "sim-model"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}


CUT = "stream cut with an in-band error event"


def _cut_with_error_event(text: str) -> bool:
    """A stream in flight on a dead engine ends with `data: {"error": ...}` and no [DONE]."""
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    return bool(events) and events[-1].startswith('{"error"') and "[DONE]" not in events


async def load(
    router: str, *, requests: int, concurrency: int, stream_every: int = 4, during: float = 0.0
) -> list[int | str]:
    """Send ``requests`` chat requests, ``concurrency`` at a time; every status (or error)."""
    results: list[int | str] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            stream = stream_every and i % stream_every == 0
            try:
                async with client.stream(
                    "POST", "/v1/chat/completions", json={**BODY, "stream": bool(stream)}
                ) as resp:
                    text = (await resp.aread()).decode()
                ok = resp.status_code == 200 and (not stream or "[DONE]" in text)
                ok = ok and '"error"' not in text
                if ok:
                    results.append(200)
                elif stream and resp.status_code == 200 and _cut_with_error_event(text):
                    results.append(CUT)
                else:
                    results.append(f"{resp.status_code}: {text[:200]}")
            except httpx.HTTPError as exc:
                results.append(repr(exc))
            if during:
                await asyncio.sleep(during)

    async with httpx.AsyncClient(base_url=router, timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return results


def test_engine_sigkilled_under_load(spawn) -> None:  # type: ignore[no-untyped-def]
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

    def kill_soon() -> None:
        time.sleep(0.7)
        os.kill(victim, signal.SIGKILL)

    killer = threading.Thread(target=kill_soon)
    killer.start()
    try:
        results = asyncio.run(load(router, requests=400, concurrency=8, during=0.005))
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
    assert registry_record(registry, "engine-a")["status"] == "healthy"
    # And the router sends traffic to it again.
    wait(lambda: httpx.get(f"{router}/health").json()["healthy_backends"] == 2, timeout=10)


def test_registry_killed_and_restarted(spawn) -> None:  # type: ignore[no-untyped-def]
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
        wait(lambda n=name: registry_record(registry, n), timeout=15, what=f"{name} re-registered")
    models = httpx.get(f"{registry}/services", params={"model": MODEL}).json()
    assert models["total"] == 2
    assert asyncio.run(load(router, requests=20, concurrency=4)) == [200] * 20
