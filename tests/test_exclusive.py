"""``llmsvc exclusive``: a command on a babysitter's GPU, the engine stopped and restored.

Real processes throughout: a registry, a router, two babysitters of simulated engines
serving one model (the stand-in ``nvidia-smi`` tells the first one's GPU memory), and
``llmsvc exclusive`` itself, run as a user would, with commands that succeed, fail, are
interrupted, or outlive an ``exclusive`` that is SIGKILLed.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from llmsvc.local.memlimit import LimitError, MemoryLimits, parse_size, wrap
from procs import (
    Proc,
    Spawn,
    pid_alive,
    records,
    spawn_babysitter,
    standin_env,
    start_babysitter,
    start_registry,
    start_router,
    status,
    wait_until,
)

MODEL = "sim-model"
GPU_IDLE = "0, 80000, 81559\n"  # MiB free, total: what the stand-in nvidia-smi prints
GPU_BUSY = "0, 2000, 81559\n"


def _chat(router: str) -> str:
    """One chat through the router; which engine answered (the sim engine's fingerprint)."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    resp = httpx.post(router + "/v1/chat/completions", json=body, timeout=10)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["system_fingerprint"])


def _serving(api: str) -> dict[str, Any] | None:
    st = status(api)
    return st if st["state"] == "ready" and st["registration"]["engine"] == "registered" else None


def _exclusive(spawn: Spawn, api: str, state: Path, *args: str, name: str = "exclusive") -> Proc:
    return spawn(name, "exclusive", "--babysitter", api, "--state-dir", str(state), *args)


def _ended(proc: Proc, timeout: float = 60) -> int:
    return proc.popen.wait(timeout)


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


@pytest.fixture
def stack(spawn: Spawn, tmp_path: Path) -> dict[str, Any]:
    """Registry, router, babysitter ``one`` (GPU 0, stand-in nvidia-smi) and ``two``."""
    gpus = tmp_path / "gpus.csv"
    gpus.write_text(GPU_IDLE)
    env = {**standin_env(tmp_path / "record"), "LLMSVC_STANDIN_GPUS": str(gpus)}
    _, registry = start_registry(spawn)
    _, router = start_router(spawn, registry)
    sitter, _, one = spawn_babysitter(
        spawn, "--engine", "sim", "--model", MODEL, "--name", "one", "--registry", registry,
        "--gpus", "0", "--gpu-probe", "nvidia-smi", "--gpu-release-timeout", "20",
        "--min-free-gpu-mem", "10",  # preflight reads the GPU: the baseline a stop waits for
        "--", "--engine-id", "one", "--time-scale", "0",
        env=env, name="one", stop_timeout=5,
    )  # fmt: skip
    sitter.wait_http(one + "/health", timeout=30)
    _, _, two = start_babysitter(spawn, registry, "two", model=MODEL)
    wait_until(lambda: _serving(one) and _serving(two), timeout=20, what="both registered")
    gpus.write_text(GPU_BUSY)  # the engine holds the GPU now
    return {"router": router, "registry": registry, "one": one, "two": two, "gpus": gpus,
            "state": tmp_path / "state", "tmp": tmp_path}  # fmt: skip


def test_the_command_runs_alone_on_the_gpu_then_the_engine_is_back(
    spawn: Spawn, stack: dict[str, Any]
) -> None:
    one, router, tmp = stack["one"], stack["router"], stack["tmp"]
    before = status(one)["pid"]
    seen = tmp / "seen.json"
    # The command reads what the world looks like while it runs: the GPU's memory free,
    # the babysitter drained with no engine process, every request answered by "two".
    check = (
        "import httpx, json, sys\n"
        f"st = httpx.get({one!r} + '/status').json()\n"
        "body = {'model': 'sim-model', 'messages': [{'role': 'user', 'content': 'x'}]}\n"
        f"fp = [httpx.post({router!r} + '/v1/chat/completions', json=body).json()"
        "['system_fingerprint'] for _ in range(6)]\n"
        f"gpu = open({str(stack['gpus'])!r}).read()\n"
        f"open({str(seen)!r}, 'w').write(json.dumps([gpu, st['state'], st['pid'], fp]))\n"
    )

    def free_later() -> None:  # the GPU memory comes back 4 s after the stop began
        time.sleep(4)
        stack["gpus"].write_text(GPU_IDLE)

    began = time.monotonic()
    freer = threading.Thread(target=free_later)
    freer.start()
    proc = _exclusive(spawn, one, stack["state"], "--", *_py(check))
    assert _ended(proc) == 0, proc.log()
    freer.join()
    log = proc.log()
    assert time.monotonic() - began > 4  # it waited for the GPU memory
    assert "engine stopped; GPU memory released: GPU 0 78.1 GiB free" in log
    assert "no memory limits" in log
    gpu, state, pid, fingerprints = orjson.loads(seen.read_bytes())
    assert gpu == GPU_IDLE  # the command ran only once the memory had come back
    assert (state, pid) == ("drained", None)
    assert fingerprints == ["two"] * 6
    st = status(one)
    assert st["state"] == "ready" and st["pid"] not in (None, before)
    assert records(stack["registry"])["one"]["status"] == "healthy"
    wait_until(lambda: "one" in {_chat(router) for _ in range(6)}, timeout=10, what="one routed")
    assert not list(stack["state"].iterdir())  # the marker is gone
    assert "Traceback" not in log


def test_a_failing_command_passes_its_status_and_the_memory_limit_holds(
    spawn: Spawn, stack: dict[str, Any]
) -> None:
    one, two, state = stack["one"], stack["two"], stack["state"]
    stack["gpus"].write_text(GPU_IDLE)
    # "two" sees no GPU (no --gpus, neither NVML nor nvidia-smi here): said, not waited for.
    proc = _exclusive(spawn, two, state, "--", "sh", "-c", "exit 7")
    assert _ended(proc) == 7, proc.log()
    assert "no GPU visible, so no GPU memory to wait for" in proc.log()
    assert "the command exited with status 7" in proc.log()
    assert _serving(two)

    hog = "x = bytearray(600 * 2**20); print('got', len(x))"
    proc = _exclusive(spawn, one, state, "--memory-max", "300M", "--", *_py(hog), name="hog")
    assert _ended(proc) == 1, proc.log()
    log = proc.log()
    assert "prlimit --as=314572800" in log and "MemoryError" in log and "got 629145600" not in log
    assert _serving(one)
    assert not list(state.iterdir())


def test_sigint_mid_command_reaches_the_command_and_restores_the_engine(
    spawn: Spawn, stack: dict[str, Any]
) -> None:
    one, tmp = stack["one"], stack["tmp"]
    stack["gpus"].write_text(GPU_IDLE)
    started = tmp / "started"
    # The handler only notes the signal: an exception raised from a handler that runs
    # inside C code (open, close) can be swallowed there, and the command would miss it.
    code = (
        "import signal, sys, time\n"
        "got = []\n"
        "signal.signal(signal.SIGINT, lambda *_: got.append(1))\n"
        f"open({str(started)!r}, 'w').close()\n"
        "deadline = time.monotonic() + 60\n"
        "while not got and time.monotonic() < deadline:\n"
        "    time.sleep(0.05)\n"
        "sys.exit(42 if got else 3)\n"
    )
    proc = _exclusive(spawn, one, stack["state"], "--", *_py(code))
    wait_until(started.exists, timeout=30, what="the command started")
    proc.signal(signal.SIGINT)
    assert _ended(proc) == 42, proc.log()
    assert "SIGINT: passing it to the command" in proc.log()
    assert _serving(one)
    assert not list(stack["state"].iterdir())


def test_sigint_while_the_engine_stops_skips_the_command(
    spawn: Spawn, stack: dict[str, Any]
) -> None:
    one, ran = stack["one"], stack["tmp"] / "ran"
    proc = _exclusive(spawn, one, stack["state"], "--", "touch", str(ran))  # the GPU stays busy
    wait_until(lambda: status(one)["pid"] is None, timeout=20, what="engine stopped")
    proc.signal(signal.SIGINT)  # while the babysitter waits for the GPU memory
    wait_until(lambda: "SIGINT: the engine is restored" in proc.log(), timeout=5, what="noted")
    stack["gpus"].write_text(GPU_IDLE)
    assert _ended(proc) == 130, proc.log()
    assert "interrupted before the command started: not running it" in proc.log()
    assert not ran.exists()
    assert _serving(one)
    assert not list(stack["state"].iterdir())


def test_a_request_for_the_only_engine_is_held_until_it_is_back(
    spawn: Spawn, tmp_path: Path
) -> None:
    _, registry = start_registry(spawn)
    _, router = start_router(spawn, registry)
    _, _, api = start_babysitter(spawn, registry, "only", model=MODEL)
    wait_until(lambda: _serving(api), timeout=20, what="registered")
    answer = tmp_path / "answer.json"
    # The command leaves a request behind (a process of its own) and ends: the router
    # holds it while the model's only engine is stopped and sends it once it is back.
    ask = (
        "import httpx, json\n"
        "body = {'model': 'sim-model', 'messages': [{'role': 'user', 'content': 'x'}]}\n"
        f"r = httpx.post({router!r} + '/v1/chat/completions', json=body, timeout=60)\n"
        f"open({str(answer)!r}, 'w').write(json.dumps([r.status_code, r.json()]))\n"
    )
    leave = (  # exit 3 if it was answered at once, while the engine was stopped
        f"import os, subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {ask!r}])\n"
        f"time.sleep(1.5); sys.exit(3 if os.path.exists({str(answer)!r}) else 0)\n"
    )
    proc = _exclusive(spawn, api, tmp_path / "state", "--", *_py(leave))
    assert _ended(proc) == 0, proc.log()
    code, body = wait_until(
        lambda: answer.exists() and orjson.loads(answer.read_bytes()), timeout=30, what="answer"
    )
    assert (code, body["system_fingerprint"]) == (200, "only")


def test_after_sigkill_of_exclusive_one_command_restores_the_engine(
    spawn: Spawn, stack: dict[str, Any]
) -> None:
    one, tmp, state = stack["one"], stack["tmp"], stack["state"]
    stack["gpus"].write_text(GPU_IDLE)
    pid_file = tmp / "pid"
    code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    proc = _exclusive(spawn, one, state, "--", *_py(code))
    wait_until(lambda: pid_file.exists() and pid_file.read_text(), timeout=30, what="command")
    proc.kill()
    child = int(pid_file.read_text())
    wait_until(lambda: not pid_alive(child), timeout=5, what="the command died with it")
    st = status(one)
    assert (st["state"], st["pid"]) == ("drained", None)  # left stopped, as it was killed
    (marker,) = state.iterdir()
    assert orjson.loads(marker.read_bytes())["step"] == "running"

    again = _exclusive(spawn, one, state, "--", "true", name="again")
    assert _ended(again) == 1
    assert "was interrupted (step running): run 'llmsvc exclusive --restore" in again.log()

    fix = _exclusive(spawn, one, state, "--restore", name="restore")
    assert _ended(fix) == 0, fix.log()
    assert _serving(one)
    assert not marker.exists()
    noop = _exclusive(spawn, one, state, "--restore", name="noop")
    assert _ended(noop) == 0
    assert "nothing to restore" in noop.log()


def test_without_the_token_nothing_happens(spawn: Spawn, tmp_path: Path) -> None:
    _, _, api = start_babysitter(spawn, None, "guarded", "--registry-token", "s3cret")
    proc = _exclusive(spawn, api, tmp_path / "state", "--", "true")
    assert _ended(proc) == 1
    assert "401" in proc.log() and "give --token or --token-file" in proc.log()
    assert status(api)["state"] == "ready"
    assert not (tmp_path / "state").exists() or not list((tmp_path / "state").iterdir())
    ok = _exclusive(spawn, api, tmp_path / "state", "--token", "s3cret", "--", "true", name="ok")
    assert _ended(ok) == 0, ok.log()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--babysitter", "http://127.0.0.1:1"], "no command: give it after --"),
        (["--", "true"], "--babysitter URL is required"),
        (["--babysitter", "http://127.0.0.1:1/x", "--", "true"], "must be an origin"),
        (["--babysitter", "http://127.0.0.1:1", "--memory-max", "lots", "--", "true"],
         "'lots' is not a size"),
        (["--babysitter", "http://127.0.0.1:1", "--memory-high", "1G", "--limiter", "prlimit",
          "--", "true"], "--memory-high needs systemd"),
        (["--babysitter", "http://127.0.0.1:1", "--restore", "--", "true"],
         "--restore takes no command"),
    ],
)  # fmt: skip
def test_bad_command_lines_are_one_line_and_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from llmsvc.cli import main

    assert main(["exclusive", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_limits_become_a_systemd_scope_where_systemd_runs() -> None:
    limits = MemoryLimits(max_bytes=parse_size("24G"), high_bytes=parse_size("20G"))
    wrapped = wrap(["pytest", "-x"], limits, systemd=True, unit="llmsvc-exclusive-7")
    user = [] if os.geteuid() == 0 else ["--user"]
    assert wrapped.argv == [
        "systemd-run", *user, "--scope", "--quiet", "--collect", "--unit=llmsvc-exclusive-7",
        "-p", "MemoryMax=25769803776", "-p", "MemoryHigh=21474836480", "--", "pytest", "-x",
    ]  # fmt: skip
    assert wrap(["t"], limits, systemd=False).argv[:2] == ["prlimit", "--as=25769803776"]
    assert wrap(["t"], MemoryLimits(), systemd=True).argv == ["t"]
    assert parse_size("1.5G") == 3 * 2**29 and parse_size("512MiB") == 2**29
    with pytest.raises(LimitError, match="systemd does not run here"):
        wrap(["t"], limits, limiter="systemd", systemd=False)
