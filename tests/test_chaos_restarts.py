"""Behaviours 3 and 4 of docs/reliability.md with the whole stack: the registry stopped
(SIGTERM) and started again, then one babysitter stopped, while clients keep sending
requests through the router; not one of them fails."""

from __future__ import annotations

import asyncio
import signal
import threading
from pathlib import Path

import httpx

import metrics
from procs import Spawn, registry_record, start_babysitter, start_registry, start_router
from procs import wait_until as wait
from traffic import load


def test_registry_and_babysitter_restarts_under_load(spawn: Spawn, tmp_path: Path) -> None:
    state = str(tmp_path / "registry.json")
    reg_proc, registry = start_registry(spawn, "--state-file", state)
    port = int(registry.rsplit(":", 1)[1])
    engine_args = ("--time-scale", "0.05")
    start_babysitter(spawn, registry, "engine-a", engine_args=engine_args)
    sitter_b, _, _ = start_babysitter(spawn, registry, "engine-b", engine_args=engine_args)
    _, router = start_router(spawn, registry)
    wait(lambda: httpx.get(f"{router}/health").json()["healthy_backends"] == 2)

    results: list[int | str] = []
    loader = threading.Thread(
        target=lambda: asyncio.run(
            load(router, requests=1000, concurrency=4, during=0.01, results=results)
        )
    )
    loader.start()
    wait(lambda: len(results) >= 20, what="requests flowing")
    # The registry stops gracefully (exit 0) and a new one takes its port and state file.
    reg_proc.signal(signal.SIGTERM)
    assert reg_proc.popen.wait(10) == 0
    start_registry(spawn, "--state-file", state, name="registry-2", port=port)
    assert registry_record(registry, "engine-a") is not None  # from the state file at once
    answered = len(results)
    wait(
        lambda: (
            len(results) >= answered + 20
            and metrics.value(metrics.scrape(router), "llmsvc_router_registry_up") == 1
        ),
        what="the router following the new registry, still serving",
    )
    # A babysitter stops: deregisters, lets its requests finish, then stops its engine.
    assert loader.is_alive()  # still under load
    sitter_b.signal(signal.SIGTERM)
    assert sitter_b.popen.wait(20) == 0
    loader.join(60)
    assert len(results) == 1000
    failures = [r for r in results if r != 200]
    assert failures == [], f"{len(failures)} of {len(results)} failed: {failures[:5]}"
    assert registry_record(registry, "engine-b") is None
    assert httpx.get(f"{router}/health").json()["healthy_backends"] == 1
    exposed = httpx.get(f"{router}/metrics").text
    assert "llmsvc_router_registry_up 1.0" in exposed
