"""``llmsvc up`` with ``idle_timeout:`` and ``standby:`` per model: the babysitter gets
``--idle-timeout``/``--standby``, bad values are one-line errors, and end to end an idle sim
model goes to standby (the registry shows it, ``llmsvc status`` says standby, not a failure)
and a request through the router wakes it.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from llmsvc.babysitter.engines import IDLE_METRICS_FLAG, SLEEP_MODE
from llmsvc.local.config import (
    IDLE_METRICS_ENGINES,
    SLEEP_MODE_ENGINES,
    ConfigError,
    StackConfig,
    load,
)
from llmsvc.local.stack import components
from procs import HOST, free_port, wait_until


def _load(tmp_path: Path, sitter: str) -> StackConfig:
    path = tmp_path / "llmsvc.yaml"
    path.write_text(f"babysitters:\n  - {sitter}\n")
    return load(path)


def _sitter_args(cfg: StackConfig) -> list[str]:
    (sitter,) = [c for c in components(cfg) if c.label.startswith("babysitter")]
    return sitter.args


def test_the_tables_agree_with_the_babysitters() -> None:
    assert set(IDLE_METRICS_ENGINES) == set(IDLE_METRICS_FLAG)
    assert set(SLEEP_MODE_ENGINES) == set(SLEEP_MODE)


def test_keys_become_babysitter_flags(tmp_path: Path) -> None:
    cfg = _load(tmp_path, "{engine: sim, model: m, port: 18100, idle_timeout: 30, standby: sleep}")
    pairs = dict(itertools.pairwise(_sitter_args(cfg)))
    assert pairs["--idle-timeout"] == "30.0" and pairs["--standby"] == "sleep"
    plain = _sitter_args(_load(tmp_path, "{engine: sim, model: m, port: 18100}"))
    assert "--idle-timeout" not in plain and "--standby" not in plain
    (status,) = [c.status_url for c in components(cfg) if c.label.startswith("babysitter")]
    assert status == "http://127.0.0.1:18101/status"


@pytest.mark.parametrize(
    ("sitter", "needle"),
    [
        ("{engine: sim, model: m, port: 18100, idle_timeout: -1}", "idle_timeout"),
        ("{engine: sim, model: m, port: 18100, idle_timeout: soon}", "idle_timeout"),
        ("{engine: sim, model: m, port: 18100, idle_timeout: 5, standby: nap}", "standby"),
        ("{engine: sim, model: m, port: 18100, standby: stop}", "give idle_timeout too"),
        (
            "{engine: llama.cpp, model: /dev/null, port: 18100, idle_timeout: 5, standby: sleep}",
            "use standby: stop for 'llama.cpp'",
        ),
        (
            "{engine: command, port: 18100, idle_timeout: 5, engine_args: [x]}",
            "idle_timeout needs an engine whose metrics show it idle",
        ),
    ],
)
def test_bad_standby_keys_are_one_line_errors(tmp_path: Path, sitter: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, sitter)
    assert needle in str(info.value) and "\n" not in str(info.value)


STACK = """
logs_dir: {logs}
startup_timeout: 60
registry: {{port: {registry}, args: [--health-interval, "0.5"]}}
router: {{port: {router}, args: [--health-interval, "0.5", --registry-sync-interval, "0.5"]}}
batch: {{enabled: false}}
babysitters:
  - name: idle
    engine: sim
    model: tiny
    port: {engine}
    idle_timeout: 2
    args: [--health-interval, "0.2", --heartbeat-interval, "0.5", --stop-timeout, "3"]
    engine_args: [--time-scale, "0"]
"""
BODY = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def test_up_an_idle_model_goes_to_standby_and_a_request_wakes_it(tmp_path: Path) -> None:
    ports = {"registry": free_port(), "router": free_port(), "engine": free_port(pair=True)}
    cfg = tmp_path / "llmsvc.yaml"
    cfg.write_text(STACK.format(logs=tmp_path / "logs", **ports))
    registry = f"http://{HOST}:{ports['registry']}"
    router = f"http://{HOST}:{ports['router']}"
    api = f"http://{HOST}:{ports['engine'] + 1}"
    try:
        up = llmsvc("up", "-f", str(cfg), cwd=tmp_path)
        assert up.returncode == 0, up.stdout + up.stderr

        token = (tmp_path / "logs" / "tokens" / "registry-token").read_text().strip()
        auth = {"Authorization": f"Bearer {token}"}

        def engine_status() -> str | None:
            resp = httpx.get(registry + "/services/idle", headers=auth, timeout=5)
            return str(resp.json()["status"]) if resp.status_code == 200 else None

        wait_until(lambda: engine_status() == "standby", timeout=30, what="standby record")
        wait_until(
            lambda: httpx.get(api + "/status", timeout=5).json()["pid"] is None,
            timeout=15,
            what="engine stopped",
        )
        assert httpx.get(api + "/status", timeout=5).json()["state"] == "standby"
        shown = llmsvc("status", "-f", str(cfg), cwd=tmp_path)
        assert shown.returncode == 0, shown.stdout  # standby is no failure
        assert "standby" in shown.stdout

        began = time.monotonic()
        resp = httpx.post(router + "/v1/chat/completions", json=BODY, timeout=60)
        assert resp.status_code == 200, resp.text  # the router held it and woke the engine
        assert time.monotonic() - began < 30
        assert httpx.get(api + "/status", timeout=5).json()["standby"]["wakes"] == 1

        # Back in standby, `llmsvc validate` passes: the engine counts as present and its
        # requests through the router wake it.
        wait_until(lambda: engine_status() == "standby", timeout=30, what="standby again")
        check = llmsvc("validate", "-f", str(cfg), cwd=tmp_path)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "in standby: idle" in check.stdout
    finally:
        down = llmsvc("down", "-f", str(cfg), cwd=tmp_path)
    assert down.returncode == 0, down.stdout


def llmsvc(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``llmsvc ARGS`` as a user runs it, in ``cwd``."""
    return subprocess.run(
        [sys.executable, "-m", "llmsvc", *args],
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
