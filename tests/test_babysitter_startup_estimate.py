"""The babysitter's own record tells routers how long a cold start takes: ``state``,
``starting_since`` (Unix time the start under way began) and ``startup_seconds`` (the
last measured launch-to-ready), published at each state change (not at the next heartbeat).

A real babysitter of a sim engine that loads for 2 s (``--startup-delay``), a real registry.
"""

from __future__ import annotations

import re
import time
from typing import Any

import httpx

from procs import (
    Spawn,
    registry_record,
    spawn_babysitter,
    start_registry,
    start_router,
    wait_until,
)

DELAY = 2.0
HEARTBEAT = "20"
"""Far longer than a start: a record that changes within a few seconds was pushed by the
state change, not refreshed by a heartbeat round."""


def _sitter(registry: str, name: str, state: str) -> dict[str, Any] | None:
    record = registry_record(registry, f"{name}-babysitter")
    if record is None or record["metadata"].get("state") != state:
        return None
    meta: dict[str, Any] = record["metadata"]
    return meta


def test_record_tells_start_then_measured_startup(spawn: Spawn) -> None:
    _, registry = start_registry(spawn)
    before = time.time()
    proc, port, api = spawn_babysitter(
        spawn, "--engine", "sim", "--model", "m", "--registry", registry,
        "--heartbeat-interval", HEARTBEAT,
        "--", "--time-scale", "0", "--startup-delay", str(DELAY),
    )  # fmt: skip
    name = f"m@127.0.0.1:{port}"

    starting = wait_until(lambda: _sitter(registry, name, "starting"), what="starting record")
    since = starting["starting_since"]
    assert isinstance(since, float) and before - 1 <= since <= time.time()
    assert starting["startup_seconds"] is None  # nothing measured before the first start
    assert starting["model_name"] == "m"

    ready = wait_until(lambda: _sitter(registry, name, "ready"), timeout=8, what="ready record")
    assert ready["starting_since"] is None
    first = ready["startup_seconds"]
    assert DELAY <= first < 30  # the engine's own delay, plus its launch

    # A restart is a new start: a new starting_since, the last measured time kept meanwhile.
    assert httpx.post(api + "/restart", timeout=5).status_code == 202
    again = wait_until(
        lambda: (m := _sitter(registry, name, "starting")) and m["starting_since"] and m,
        timeout=8,
        what="starting again",
    )
    assert again["starting_since"] > since
    assert again["startup_seconds"] == first
    ready = wait_until(lambda: _sitter(registry, name, "ready"), timeout=8, what="ready again")
    assert ready["starting_since"] is None and DELAY <= ready["startup_seconds"] < 30
    assert proc.popen.poll() is None


def test_a_held_stream_hears_the_estimate_from_the_last_start(spawn: Spawn) -> None:
    """The router's hold reads the record: a stream sent while the engine restarts gets
    ``: waiting for m: 0 ahead, about N s`` with N from the last measured start, then the
    answer."""
    _, registry = start_registry(spawn)
    _, router = start_router(spawn, registry, "--hold-feedback-interval", "0.3")
    proc, port, api = spawn_babysitter(
        spawn, "--engine", "sim", "--model", "m", "--registry", registry,
        "--", "--time-scale", "0", "--startup-delay", str(DELAY),
    )  # fmt: skip
    name = f"m@127.0.0.1:{port}"
    first = wait_until(lambda: _sitter(registry, name, "ready"), timeout=15, what="ready")
    wait_until(lambda: _eligible(router, name), timeout=10, what="the router routes to it")

    assert httpx.post(api + "/restart", timeout=5).status_code == 202
    wait_until(lambda: _sitter(registry, name, "starting"), timeout=8, what="restarting")
    wait_until(lambda: not _eligible(router, name), timeout=8, what="the router holds")
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    with httpx.stream(
        "POST", router + "/v1/chat/completions", json={**body, "stream": True}, timeout=30
    ) as resp:
        assert resp.status_code == 200
        lines = [line for line in resp.iter_lines() if line]
    comments = [line for line in lines if line.startswith(":")]
    assert comments, lines
    estimate = re.fullmatch(r": waiting for m: 0 ahead, about (\d+) s", comments[0])
    assert estimate, comments
    assert 1 <= int(estimate.group(1)) <= round(first["startup_seconds"]) + 1
    assert lines[-1] == "data: [DONE]"
    assert proc.popen.poll() is None


def _eligible(router: str, name: str) -> bool:
    views = httpx.get(router + "/services", timeout=5).json()["services"]
    return any(v["name"] == name and v["eligible"] for v in views)
