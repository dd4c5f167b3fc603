"""On Kubernetes: the reason in the termination message, and exit 1 when restarts stop."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from llmsvc.babysitter.app import RUNTIME, create_app
from llmsvc.babysitter.settings import BabysitterSettings
from procs import (
    STANDINS,
    Spawn,
    free_port,
    records,
    spawn_babysitter,
    start_registry,
    status,
    wait_state,
    wait_until,
)

FAILING = str(STANDINS / "failing_engine.py")

Client = Callable[..., Awaitable[TestClient[Any, Any]]]


def test_crash_loop_writes_the_reason_and_exits_1(spawn: Spawn, tmp_path: Path) -> None:
    log = tmp_path / "termination-log"
    proc, _, _ = spawn_babysitter(
        spawn, "--engine", "command", "--max-restarts", "1", "--termination-log", str(log),
        "--exit-on-crash-loop", "--", sys.executable, FAILING, "gpu-oom",
    )  # fmt: skip
    assert proc.popen.wait(20) == 1
    text = log.read_text()
    assert text.startswith("GPUOutOfMemory: "), text
    assert "crash loop" in text
    assert "exiting (--exit-on-crash-loop)" in proc.log()


def test_giving_up_stops_as_sigterm_does_deregistered(spawn: Spawn, tmp_path: Path) -> None:
    """Given up, the babysitter shuts down gracefully: it leaves the registry, exits 1."""
    _, registry = start_registry(spawn)
    log = tmp_path / "termination-log"
    proc, _, api = spawn_babysitter(
        spawn, "--engine", "command", "--max-restarts", "0", "--startup-timeout", "2",
        "--termination-log", str(log), "--exit-on-crash-loop", "--registry", registry,
        "--", sys.executable, FAILING, "sleep",
    )  # fmt: skip
    proc.wait_http(api + "/status")
    name = status(api)["name"]
    wait_until(lambda: f"{name}-babysitter" in records(registry), timeout=5, what="registered")
    assert proc.popen.wait(20) == 1
    expected = "StartupTimeout: killed by SIGTERM; crash loop: 1 failures in a row\n"
    assert log.read_text() == expected  # the engine's SIGTERM: the babysitter stopped it
    assert records(registry) == {}
    out = proc.log()
    assert "exiting (--exit-on-crash-loop)" in out
    assert f"deregistered {name}-babysitter" in out


@pytest.mark.parametrize(
    ("engine", "state", "why", "reason"),
    [
        ([sys.executable, FAILING, "exit", "3"], "crash-loop", "crash loop: 1 failures in a row",
         "Exited"),
        (["/no/such/engine"], "failed", "the engine cannot start", "SpawnFailed"),
    ],
)  # fmt: skip
async def test_giving_up_is_an_event_not_a_signal(
    aiohttp_client: Client,
    tmp_path: Path,
    engine: list[str],
    state: str,
    why: str,
    reason: str,
) -> None:
    """The supervisor gives up through the app's event (serve() waits on it), never by
    sending its own process SIGTERM."""
    received: list[int] = []

    def record(signum: int, _: FrameType | None) -> None:
        received.append(signum)

    previous = signal.signal(signal.SIGTERM, record)
    try:
        log = tmp_path / "termination-log"
        settings = BabysitterSettings(
            engine="command", port=free_port(pair=True), max_restarts=0, stop_timeout=2,
            termination_log=str(log), exit_on_crash_loop=True,
        )  # fmt: skip
        app = create_app(settings, engine_args=engine, registry=CollectorRegistry())
        client = await aiohttp_client(app)
        give_up = app[RUNTIME].give_up
        await asyncio.wait_for(give_up.stop.wait(), 20)
        assert give_up.why == why
        assert (give_up.exit_code(0), give_up.exit_code(1)) == (1, 1)
        st = await (await client.get("/status")).json()
        assert (st["state"], st["last_exit"]["reason"]) == (state, reason)
        assert log.read_text().startswith(f"{reason}: ")
        assert log.read_text().endswith(f"; {why}\n")
        await client.close()
        await asyncio.sleep(0.2)  # a signal sent to the process would have arrived by now
        assert received == []
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_without_the_flag_it_waits_in_crash_loop(spawn: Spawn, tmp_path: Path) -> None:
    log = tmp_path / "termination-log"
    proc, _, api = spawn_babysitter(
        spawn, "--engine", "command", "--max-restarts", "0", "--termination-log", str(log),
        "--", sys.executable, FAILING, "exit", "3",
    )  # fmt: skip
    proc.wait_http(api + "/status")
    wait_state(api, "crash-loop", timeout=15)
    assert proc.alive()
    assert log.read_text().startswith("Exited: ")
    assert status(api)["last_exit"]["code"] == 3
