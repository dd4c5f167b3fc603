"""The supervised engine's life: crash and restart, hang, startup timeout, crash loop, drain."""

from __future__ import annotations

import os
import signal
import sys
import time
from functools import partial
from pathlib import Path

import httpx

import metrics
from procs import (
    Spawn,
    pid_alive,
    records,
    spawn_babysitter,
    start_registry,
    status,
    wait_state,
    wait_until,
)


def test_killed_engine_is_restarted_and_registered_again(spawn: Spawn) -> None:
    _, registry = start_registry(spawn)
    proc, port, api = spawn_babysitter(
        spawn, "--engine", "sim", "--model", "m", "--registry", registry
    )
    proc.wait_http(api + "/health")
    name = f"m@127.0.0.1:{port}"
    before = wait_until(lambda: records(registry).get(name), what="engine record")
    first = status(api)["pid"]
    os.kill(first, signal.SIGKILL)
    # The record stays, reported unhealthy by the babysitter's heartbeat, until the engine is back.
    wait_until(
        lambda: records(registry).get(name, {}).get("status") == "unhealthy",
        timeout=5,
        what="engine reported unhealthy",
    )
    wait_until(lambda: st["pid"] != first if (st := status(api))["pid"] else False, what="new pid")
    st = wait_state(api, "ready")
    assert f"deregistered {name}" not in proc.log()
    assert st["pid"] != first
    assert st["restarts"] == 1
    assert st["last_exit"]["signal"] == signal.SIGKILL
    assert st["last_exit"]["code"] is None
    assert st["last_exit"]["reason"] == "Signaled"
    assert st["last_exit"]["detail"] == "killed by SIGKILL"
    wait_until(
        lambda: records(registry).get(name, before)["registered_at"] > before["registered_at"],
        timeout=5,
        what="engine registered again",
    )
    metrics = httpx.get(api + "/metrics").text
    assert 'llmsvc_babysitter_restarts_total{model_name="m",reason="Signaled"} 1.0' in metrics
    assert 'llmsvc_babysitter_last_exit_code{model_name="m"} 137.0' in metrics
    assert 'llmsvc_babysitter_engine_up{model_name="m"} 1.0' in metrics
    assert 'llmsvc_babysitter_state{model_name="m",state="ready"} 1.0' in metrics


def test_backoff_starts_over_after_a_stable_uptime(spawn: Spawn) -> None:
    proc, _, api = spawn_babysitter(
        spawn, "--engine", "sim", "--model", "m", "--stable-uptime", "0.3"
    )
    proc.wait_http(api + "/health")
    for kill in (1, 2):
        time.sleep(0.4)  # ready for longer than --stable-uptime
        pid = status(api)["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_until(partial(_restarted, api, pid), what=f"restart {kill}")
        st = wait_state(api, "ready")
    assert (st["restarts"], st["consecutive_failures"]) == (2, 1)  # not 2: it was stable


def _restarted(api: str, pid: int) -> bool:
    """The babysitter at ``api`` runs an engine, not the one of ``pid``."""
    return status(api)["pid"] not in (None, pid)


def test_sigkilled_babysitter_takes_its_engine_along(spawn: Spawn) -> None:
    proc, _, api = spawn_babysitter(spawn, "--engine", "sim", "--model", "m")
    proc.wait_http(api + "/health")
    engine = status(api)["pid"]
    proc.kill()
    wait_until(lambda: not pid_alive(engine), timeout=5, what="engine dead (parent-death signal)")


def test_hung_engine_is_killed_and_restarted(spawn: Spawn) -> None:
    proc, _, api = spawn_babysitter(
        spawn, "--engine", "sim", "--model", "m", "--stop-timeout", "0.5"
    )
    proc.wait_http(api + "/health")
    engine = status(api)["pid"]
    os.kill(engine, signal.SIGSTOP)  # alive, but answers nothing
    try:
        wait_until(lambda: status(api)["state"] == "unhealthy", timeout=5, what="unhealthy")
        assert httpx.get(api + "/health").status_code == 503
        st = wait_state(api, "ready", timeout=20)
    finally:
        if pid_alive(engine):
            os.kill(engine, signal.SIGKILL)
    assert st["last_exit"]["reason"] == "Hung"
    assert st["pid"] != engine


def test_startup_timeout_kills_and_counts_a_failure(spawn: Spawn) -> None:
    proc, _, api = spawn_babysitter(
        spawn, "--engine", "sim", "--model", "m", "--startup-timeout", "1.5",
        "--max-restarts", "0", "--", "--startup-delay", "100",
    )  # fmt: skip
    proc.wait_http(api + "/status")
    engine = wait_until(lambda: status(api)["pid"], what="engine pid")
    assert status(api)["state"] == "starting"
    assert httpx.get(api + "/health").status_code == 503
    st = wait_state(api, "crash-loop", timeout=15)
    assert not pid_alive(engine)
    assert st["last_exit"]["reason"] == "StartupTimeout"
    assert st["pid"] is None
    body = httpx.get(api + "/health").json()
    assert body["error"]["code"] == "engine_not_ready"


def test_crash_loop_stops_restarts_then_restart_resumes(spawn: Spawn, tmp_path: Path) -> None:
    marker = tmp_path / "healthy"
    script = (
        "import os, sys, pathlib\n"
        f"if not pathlib.Path({str(marker)!r}).exists(): sys.exit(3)\n"
        "sim = [sys.executable, '-m', 'llmsvc', 'sim-engine', '--port', sys.argv[1]]\n"
        "os.execv(sys.executable, [*sim, '--model-name', 'crashy'])\n"
    )
    _, _, api = spawn_babysitter(
        spawn, "--engine", "command", "--max-restarts", "2", "--", sys.executable, "-c", script,
        "{port}",
    )  # fmt: skip
    st = wait_state(api, "crash-loop", timeout=15)
    assert (st["restarts"], st["last_exit"]["code"], st["last_exit"]["reason"]) == (2, 3, "Exited")
    time.sleep(1.0)  # no busy loop: nothing restarts in crash-loop
    assert status(api)["restarts"] == 2
    marker.touch()
    resp = httpx.post(api + "/restart")
    assert resp.status_code == 202
    st = wait_state(api, "ready")
    assert st["models"] == ["crashy"]
    assert st["model_name"] is None
    assert httpx.get(api + "/models").json()["data"][0]["id"] == "crashy"
    assert 'reason="Requested"} 1.0' in httpx.get(api + "/metrics").text


def test_missing_binary_is_a_spawn_failure(spawn: Spawn) -> None:
    _, _, api = spawn_babysitter(
        spawn, "--engine", "command", "--max-restarts", "0", "--", "/nonexistent/engine"
    )
    st = wait_state(api, "failed", timeout=10)
    assert st["last_exit"]["reason"] == "SpawnFailed"
    assert "/nonexistent/engine" in st["last_exit"]["detail"]


def test_drain_deregisters_and_waits_then_restart_registers(spawn: Spawn) -> None:
    _, registry = start_registry(spawn)
    proc, port, api = spawn_babysitter(
        spawn, "--engine", "sim", "--model", "m", "--registry", registry, "--drain-timeout", "10",
        "--", "--decode-tokens-per-s", "20",
    )  # fmt: skip
    proc.wait_http(api + "/health")
    name = f"m@127.0.0.1:{port}"
    wait_until(lambda: name in records(registry), what="engine record")
    engine = f"http://127.0.0.1:{port}"
    body = {"model": "m", "prompt": "hi", "max_tokens": 20}
    with httpx.Client(timeout=10) as client:
        # A request of ~1 s in flight while draining.
        import threading

        result: list[int] = []
        t = threading.Thread(
            target=lambda: result.append(
                client.post(engine + "/v1/completions", json=body).status_code
            )
        )
        t.start()
        wait_until(
            lambda: metrics.value(metrics.scrape(engine), "vllm:num_requests_running") > 0,
            timeout=5,
            what="request running",
        )
        drained = client.post(api + "/drain").json()
        t.join(10)
    assert drained["drained"] is True
    assert drained["in_flight"] == 0
    assert drained["waited_s"] > 0.2
    assert result == [200]
    assert name not in records(registry)
    st = status(api)
    assert st["state"] == "drained"
    assert httpx.get(api + "/health").status_code == 503
    # Drained stays out of the registry (heartbeats go on) until POST /restart.
    wait_until(lambda: f"{name}-babysitter" in records(registry), what="babysitter kept")
    assert name not in records(registry)
    assert httpx.post(api + "/restart").status_code == 202
    wait_state(api, "ready")
    wait_until(lambda: name in records(registry), timeout=5, what="registered after restart")


def test_log_dir_gets_engine_output(spawn: Spawn, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    proc, _, api = spawn_babysitter(
        spawn, "--engine", "sim", "--model", "m", "--log-dir", str(logs), "--name", "eng:1"
    )
    proc.wait_http(api + "/health")
    log = logs / "eng_1.engine.log"
    wait_until(lambda: log.exists() and "sim-engine" in log.read_text(), timeout=5, what="log")
