"""Standby: a babysitter with ``--idle-timeout`` stops its idle engine (``--standby stop``) or
puts it to sleep (``--standby sleep``), keeps it registered as ``standby``, and brings it back
on ``POST /wake``.

Pure parts (the idle clock, reading the load, the GPU lock, the engines' command lines) with
an injected clock; the rest with real processes: a registry, a babysitter and its sim engine.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmsvc.babysitter.engines import EngineConfigError, build_engine
from llmsvc.babysitter.settings import BabysitterSettings
from llmsvc.babysitter.standby import EngineLoad, GpuLock, IdleClock, read_load
from procs import (
    HOST,
    Spawn,
    pid_alive,
    port_busy,
    records,
    spawn_babysitter,
    start_registry,
    status,
    wait_state,
    wait_until,
)

COMPLETION = {"model": "m", "prompt": "hello", "max_tokens": 4}


# ---- pure parts ----------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_idle_clock_counts_from_the_last_activity() -> None:
    clock = FakeClock()
    idle = IdleClock(2.0, clock=clock)
    idle.reset()
    assert not idle.observe(EngineLoad(in_flight=0, activity=5))  # first look: counts from now
    clock.now += 1.5
    assert not idle.observe(EngineLoad(in_flight=0, activity=5))
    clock.now += 0.6
    assert idle.observe(EngineLoad(in_flight=0, activity=5))  # 2.1 s with nothing moving
    clock.now += 0.1
    assert not idle.observe(EngineLoad(in_flight=0, activity=6))  # a request came and went
    clock.now += 1.9
    assert not idle.observe(EngineLoad(in_flight=1, activity=6))  # one running
    clock.now += 1.5
    assert not idle.observe(EngineLoad(in_flight=0, activity=6))  # counted from the busy one
    clock.now += 0.6
    assert idle.observe(EngineLoad(in_flight=0, activity=6))
    idle.reset()  # it woke: counting starts over
    assert not idle.observe(EngineLoad(in_flight=0, activity=6))


def test_unreadable_metrics_are_never_idle() -> None:
    clock = FakeClock()
    idle = IdleClock(1.0, clock=clock)
    for _ in range(5):
        clock.now += 10
        assert not idle.observe(None)
    clock.now += 10
    assert not idle.observe(EngineLoad(0, 0))  # readable again: counts from now
    clock.now += 1
    assert idle.observe(EngineLoad(0, 0))


VLLM_PAGE = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m",engine="0"} 2.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m",engine="0"} 1.0
# TYPE vllm:request_success counter
vllm:request_success_total{model_name="m",engine="0",finished_reason="stop"} 3.0
vllm:request_success_total{model_name="m",engine="0",finished_reason="length"} 4.0
"""
LLAMA_PAGE = """\
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 0
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 0
# TYPE llamacpp:tokens_predicted_total counter
llamacpp:tokens_predicted_total 120
# TYPE llamacpp:n_decode_total counter
llamacpp:n_decode_total 30
"""


def test_read_load_from_vllm_and_llama_cpp_pages() -> None:
    assert read_load(VLLM_PAGE) == EngineLoad(in_flight=3, activity=7.0)
    assert read_load(LLAMA_PAGE) == EngineLoad(in_flight=0, activity=150.0)
    only_gauges = "\n".join(VLLM_PAGE.splitlines()[:4]) + "\n"
    assert read_load(only_gauges) is None  # no counter: a request between scrapes is unseen
    assert read_load("# TYPE other gauge\nother 1\n") is None
    assert read_load("not prometheus {{{") is None


def test_gpu_lock_is_all_or_nothing(tmp_path: Path) -> None:
    a = GpuLock(tmp_path, ["0", "1"], owner="a")
    b = GpuLock(tmp_path, ["1"], owner="b")
    c = GpuLock(tmp_path, ["0"], owner="c")
    assert b.try_acquire() and b.held
    assert not a.try_acquire() and not a.held  # GPU 1 is b's: a takes none
    assert c.try_acquire()  # so GPU 0 stayed free
    assert "GPU 0 (c)" in a.holder()
    b.release()
    c.release()
    assert a.try_acquire()
    assert not GpuLock(tmp_path, ["0"], owner="d").try_acquire()
    a.release()
    assert GpuLock(tmp_path, ["0"], owner="d").try_acquire()


def _settings(**values: Any) -> BabysitterSettings:
    return BabysitterSettings.model_validate({"model": "/models/x.gguf", **values})


def test_engines_get_what_standby_needs() -> None:
    llama = build_engine(_settings(engine="llama.cpp", idle_timeout=5), [])
    assert "--metrics" in llama.argv
    assert "--metrics" not in build_engine(_settings(engine="llama.cpp"), []).argv
    assert llama.argv.count("--metrics") == 1
    given = build_engine(_settings(engine="llama.cpp", idle_timeout=5), ["--metrics"])
    assert given.argv.count("--metrics") == 1
    sglang = build_engine(_settings(engine="sglang", idle_timeout=5), [])
    assert "--enable-metrics" in sglang.argv
    vllm = build_engine(_settings(engine="vllm", idle_timeout=5, standby="sleep"), [])
    assert "--enable-sleep-mode" in vllm.argv
    assert vllm.env["VLLM_SERVER_DEV_MODE"] == "1"
    stop = build_engine(_settings(engine="vllm", idle_timeout=5), [])
    assert "--enable-sleep-mode" not in stop.argv and "VLLM_SERVER_DEV_MODE" not in stop.env


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"engine": "command", "idle_timeout": 1}, "--idle-timeout needs the engine's metrics"),
        ({"engine": "infinilm", "idle_timeout": 1}, "--idle-timeout needs the engine's metrics"),
        ({"engine": "llama.cpp", "idle_timeout": 1, "standby": "sleep"}, "use --standby stop"),
        ({"engine": "sglang", "idle_timeout": 1, "standby": "sleep"}, "use --standby stop"),
    ],
)
def test_engines_that_cannot_standby_are_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(EngineConfigError, match=message):
        build_engine(_settings(**values), ["serve", "{port}"])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--engine", "command", "--idle-timeout", "1", "--", "x"], "--idle-timeout needs"),
        (["--engine", "llama.cpp", "--model", "x.gguf", "--idle-timeout", "1", "--standby",
          "sleep"], "use --standby stop"),
        (["--engine", "sim", "--model", "m", "--standby", "nap"], "--standby"),
        (["--engine", "sim", "--model", "m", "--idle-timeout", "-1"], "--idle-timeout"),
    ],
)  # fmt: skip
def test_cli_refuses_with_one_line(flags: list[str], message: str) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "llmsvc", "babysitter", *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert message in run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1


# ---- real processes ------------------------------------------------------------------------


def _sitter(spawn: Spawn, registry: str, *flags: str, engine: tuple[str, ...] = ()) -> Any:
    proc, port, api = spawn_babysitter(
        spawn, "--engine", "sim", "--model", "m", "--registry", registry, *flags,
        "--", "--time-scale", "0", *engine,
    )  # fmt: skip
    return proc, port, api, f"m@{HOST}:{port}"


def _engine_record(registry: str, name: str) -> dict[str, Any] | None:
    return records(registry).get(name)


def _metric(api: str, name: str) -> float:
    for line in httpx.get(api + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name}")


def test_stop_mode_stops_the_idle_engine_and_a_wake_starts_it(spawn: Spawn) -> None:
    _, registry = start_registry(spawn)
    _, port, api, name = _sitter(spawn, registry, "--idle-timeout", "1")
    ready = wait_state(api, "ready", timeout=30)
    assert ready["standby"]["mode"] == "stop" and ready["standby"]["since"] is None
    first_pid = ready["pid"]
    engine = f"http://{HOST}:{port}"
    assert httpx.post(engine + "/v1/completions", json=COMPLETION, timeout=10).status_code == 200

    wait_state(api, "standby", timeout=20)  # out of rotation at once, then stopped
    standby = wait_until(lambda: (s := status(api))["pid"] is None and s, timeout=10, what="stop")
    assert standby["state"] == "standby" and standby["standby"]["since"] is not None
    assert not pid_alive(first_pid)
    wait_until(lambda: not port_busy(port), timeout=10, what="engine port free")
    # Kept in the registry, status standby, heartbeated: still there after several TTL-less
    # health rounds of the registry (every 0.5 s), never flipped to unhealthy by a check.
    time.sleep(1.5)
    record = _engine_record(registry, name)
    assert record is not None and record["status"] == "standby"
    sitter = _engine_record(registry, f"{name}-babysitter")
    assert sitter is not None and sitter["metadata"]["state"] == "standby"
    assert "wake_seconds" not in sitter["metadata"]
    assert httpx.get(registry + "/stats", timeout=5).json()["standby"] == 1
    healthy = httpx.get(registry + "/services", params={"healthy": "true"}, timeout=5).json()
    assert name not in {r["name"] for r in healthy["services"]}
    assert _metric(api, "llmsvc_babysitter_standby") == 1

    began = time.time()
    woke = httpx.post(api + "/wake", timeout=5)
    assert woke.status_code == 202 and woke.json() == {"state": "waking"}
    again = httpx.post(api + "/wake", timeout=5)  # waking (or ready already): nothing to do
    assert again.status_code == 200 and again.json()["state"] in ("waking", "ready")

    back = wait_state(api, "ready", timeout=30)
    assert back["pid"] != first_pid and back["restarts"] == 0
    assert back["standby"]["wakes"] == 1 and back["standby"]["last_wake_seconds"] > 0
    resp = httpx.post(engine + "/v1/completions", json=COMPLETION, timeout=10)
    assert resp.status_code == 200
    meta = wait_until(
        lambda: (
            (r := _engine_record(registry, f"{name}-babysitter"))
            and "wake_seconds" in r["metadata"]
            and r["metadata"]
        ),
        timeout=10,
        what="wake_seconds published",
    )
    assert 0 < meta["wake_seconds"] <= time.time() - began + 1
    assert _metric(api, "llmsvc_babysitter_wakes_total") == 1
    assert _metric(api, "llmsvc_babysitter_wake_seconds_count") == 1


def test_waking_is_published_with_its_start_time(spawn: Spawn) -> None:
    _, registry = start_registry(spawn)
    _, _, api, name = _sitter(
        spawn, registry, "--idle-timeout", "0.5", engine=("--startup-delay", "1.5")
    )
    wait_state(api, "standby", timeout=30)
    before = time.time()
    assert httpx.post(api + "/wake", timeout=5).status_code == 202

    def waking() -> dict[str, Any] | None:
        record = _engine_record(registry, f"{name}-babysitter")
        meta: dict[str, Any] | None = record["metadata"] if record else None
        return meta if meta and meta["state"] == "waking" else None

    meta = wait_until(waking, timeout=5, what="waking record")
    assert before - 1 <= meta["starting_since"] <= time.time()
    assert meta["startup_seconds"] >= 1.5  # the last full start, measured
    engine = _engine_record(registry, name)
    assert engine is not None and engine["status"] == "standby"  # not routable until ready
    wait_state(api, "ready", timeout=30)
    record = wait_until(
        lambda: (r := _engine_record(registry, name)) and r["status"] == "healthy" and r,
        timeout=10,
        what="engine healthy again",
    )
    assert record["status"] == "healthy"


def test_sleep_mode_puts_the_engine_to_sleep_and_wakes_the_same_process(spawn: Spawn) -> None:
    _, registry = start_registry(spawn)
    _, port, api, name = _sitter(
        spawn, registry, "--idle-timeout", "1", "--standby", "sleep",
        engine=("--time-scale", "1", "--wake-delay", "0.3"),
    )  # fmt: skip
    ready = wait_state(api, "ready", timeout=30)
    pid = ready["pid"]
    engine = f"http://{HOST}:{port}"
    standby = wait_state(api, "standby", timeout=20)
    assert standby["pid"] == pid and standby["standby"]["mode"] == "sleep"
    assert httpx.get(engine + "/is_sleeping", timeout=5).json() == {"is_sleeping": True}
    time.sleep(1.0)  # health checks of a sleeping engine (503) must not make it "hung"
    assert status(api)["state"] == "standby"
    record = _engine_record(registry, name)
    assert record is not None and record["status"] == "standby"

    assert httpx.post(api + "/wake", timeout=5).status_code == 202
    back = wait_state(api, "ready", timeout=20)
    assert back["pid"] == pid and back["restarts"] == 0
    assert back["standby"]["last_wake_seconds"] >= 0.3  # the engine's --wake-delay
    assert httpx.get(engine + "/is_sleeping", timeout=5).json() == {"is_sleeping": False}
    resp = httpx.post(engine + "/v1/completions", json=COMPLETION, timeout=10)
    assert resp.status_code == 200
    wait_until(
        lambda: (r := _engine_record(registry, name)) and r["status"] == "healthy",
        timeout=10,
        what="engine healthy again",
    )


def test_a_busy_engine_never_goes_to_standby(spawn: Spawn) -> None:
    """A request every 0.3 s against a 3 s idle timeout, watched for 5 s. (1 s was tried:
    a loaded test machine can leave a 1 s gap between two requests of this thread.)"""
    _, registry = start_registry(spawn)
    _, port, api, _ = _sitter(spawn, registry, "--idle-timeout", "3")
    wait_state(api, "ready", timeout=30)
    engine = f"http://{HOST}:{port}"
    stop = threading.Event()
    failures: list[int] = []

    def traffic() -> None:
        while not stop.is_set():
            code = httpx.post(engine + "/v1/completions", json=COMPLETION, timeout=10).status_code
            if code != 200:
                failures.append(code)
            stop.wait(0.3)  # a request every 0.3 s: each ends at once (--time-scale 0)

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            assert status(api)["state"] == "ready"
            time.sleep(0.1)
    finally:
        stop.set()
        worker.join(timeout=15)
    assert not failures
    wait_state(api, "standby", timeout=20)  # and once the traffic stops, it goes


def test_sigterm_and_drain_in_standby(spawn: Spawn) -> None:
    _, registry = start_registry(spawn)
    proc, _, api, name = _sitter(spawn, registry, "--idle-timeout", "0.5")
    wait_state(api, "standby", timeout=30)
    drained = httpx.post(api + "/drain", timeout=10)
    assert drained.status_code == 200 and drained.json()["in_flight"] == 0
    assert status(api)["state"] == "drained"
    assert name not in records(registry)
    assert httpx.post(api + "/wake", timeout=5).json() == {"state": "drained"}  # not standby
    assert httpx.post(api + "/restart", timeout=5).status_code == 202
    wait_state(api, "ready", timeout=30)
    wait_state(api, "standby", timeout=20)
    assert proc.stop(timeout=15) == 0
    left = records(registry)
    assert name not in left and f"{name}-babysitter" not in left


def test_a_registry_that_forgot_a_standby_engine_hears_standby_again(spawn: Spawn) -> None:
    """Registered anew (which starts healthy), the engine is reported standby at once: a
    router never sees it routable while it is stopped. /wake needs the registry token."""
    token = "standby-token"
    auth = {"Authorization": f"Bearer {token}"}
    first, registry = start_registry(spawn, token=token)
    port = int(registry.rsplit(":", 1)[1])
    _, _, api, name = _sitter(spawn, registry, "--idle-timeout", "0.5", "--registry-token", token)
    wait_state(api, "standby", timeout=30)
    wait_until(lambda: status(api)["pid"] is None, timeout=10, what="engine stopped")
    assert first.stop(timeout=15) is not None
    _, again = start_registry(spawn, name="registry-again", port=port, token=token)

    def engine_record() -> dict[str, Any] | None:
        resp = httpx.get(f"{again}/services/{name}", headers=auth, timeout=5)
        body: dict[str, Any] | None = resp.json() if resp.status_code == 200 else None
        return body

    wait_until(engine_record, timeout=20, what="registered again")
    # The first look may fall in the milliseconds between the registration and its
    # heartbeat; from then on it is standby (without that heartbeat: healthy until the
    # next heartbeat round, 0.3 s later, or unhealthy from a health check).
    seen: set[str] = set()
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        current = engine_record()
        assert current is not None
        seen.add(current["status"])
        time.sleep(0.05)
    assert seen == {"standby"}
    assert httpx.post(api + "/wake", timeout=5).status_code == 401
    assert status(api)["state"] == "standby"
    assert httpx.post(api + "/wake", headers=auth, timeout=5).status_code == 202
    wait_state(api, "ready", timeout=30)
