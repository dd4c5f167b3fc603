"""Flow control through ``llmsvc up``: the file's router keys become router flags, and the
queue works out of the box because the babysitter advertises the sim engine's slots.

The end-to-end case runs ``llmsvc up`` (registry, router, one babysitter of a sim engine
with one slot), sends three requests at once with a tenant's key from the stack's keys
file and watches the engine's own gauges: the router sends it one request at a time
(nothing waits at the engine), and all three succeed. Without the advertised
``max_concurrency`` the router would send all three and the engine would queue two.
Then ``llmsvc validate`` (with that key) passes, ``/demand`` included.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console

import metrics
from llmsvc.local.config import ConfigError, demo_config, load
from llmsvc.local.stack import components
from llmsvc.local.validate import Validator
from procs import HOST, free_port

FLOW = """
logs_dir: {logs}
router:
  port: 18080
  api_keys_file: {keys}
  backend_concurrency: 4
  queue_size: 50
  queue_timeout: 20
  hold_timeout: 0
babysitters:
  - {{name: a, engine: sim, model: m, port: 18100}}
"""


def _router_args(path: Path) -> list[str]:
    (router,) = [c for c in components(load(path)) if c.label == "router"]
    return router.args


def test_router_keys_become_flags(tmp_path: Path) -> None:
    (tmp_path / "keys.yaml").write_text("- {key: sk-a, name: a}\n")
    cfg = tmp_path / "llmsvc.yaml"
    cfg.write_text(FLOW.format(logs=tmp_path / "logs", keys="keys.yaml"))
    args = _router_args(cfg)
    pairs = dict(itertools.pairwise(args))
    # A relative keys file is the stack file's directory's, handed over whole.
    assert pairs["--api-keys-file"] == str((tmp_path / "keys.yaml").absolute())
    assert pairs["--backend-concurrency"] == "4"
    assert pairs["--queue-size"] == "50"
    assert pairs["--queue-timeout"] == "20.0"
    assert pairs["--hold-timeout"] == "0.0"


def test_router_defaults_are_the_routers() -> None:
    """Nothing set: no flow-control flag, the router's defaults apply (hold 30 s, queue 1000,
    slots from the engines' records)."""
    (router,) = [c for c in components(demo_config()) if c.label == "router"]
    flags = {"--api-keys-file", "--backend-concurrency", "--queue-size", "--queue-timeout"}
    assert not flags & set(router.args)
    assert "--hold-timeout" not in router.args


@pytest.mark.parametrize(
    ("router", "needle"),
    [
        ("{port: 18080, api_keys_file: nowhere.yaml}", "router.api_keys_file: no such file"),
        ("{port: 18080, queue_size: -1}", "router.queue_size"),
        ("{port: 18080, backend_concurrency: 0}", "router.backend_concurrency"),
        ("{port: 18080, queue_timeout: 0}", "router.queue_timeout"),
        ("{port: 18080, hold_timeout: soon}", "router.hold_timeout"),
    ],
)
def test_bad_router_keys_are_one_line_errors(tmp_path: Path, router: str, needle: str) -> None:
    cfg = tmp_path / "llmsvc.yaml"
    cfg.write_text(f"router: {router}\n")
    with pytest.raises(ConfigError) as info:
        load(cfg)
    assert needle in str(info.value) and "\n" not in str(info.value)


STACK = """
logs_dir: {logs}
startup_timeout: 60
registry: {{port: {registry}, args: [--health-interval, "0.5"]}}
router:
  port: {router}
  args: [--health-interval, "0.5"]
  api_keys_file: keys.yaml
  queue_timeout: 30
batch: {{enabled: false}}
babysitters:
  - name: slow
    engine: sim
    model: tiny
    port: {engine}
    engine_args: [--max-num-seqs, "1", --decode-tokens-per-s, "40", --time-scale, "1"]
"""
KEYS = "- {key: sk-team, name: team, max_priority: standard}\n"
BODY = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}


def test_up_queues_for_the_engines_advertised_slot(tmp_path: Path) -> None:
    ports = {"registry": free_port(), "router": free_port(), "engine": free_port(pair=True)}
    (tmp_path / "keys.yaml").write_text(KEYS)
    cfg = tmp_path / "llmsvc.yaml"
    cfg.write_text(STACK.format(logs=tmp_path / "logs", **ports))
    router, engine = f"http://{HOST}:{ports['router']}", f"http://{HOST}:{ports['engine']}"
    auth = {"Authorization": "Bearer sk-team"}
    try:
        up = llmsvc("up", "-f", str(cfg), cwd=tmp_path)
        assert up.returncode == 0, up.stdout + up.stderr
        assert httpx.post(router + "/v1/chat/completions", json=BODY).status_code == 401

        def served() -> bool:
            r = httpx.post(router + "/v1/chat/completions", json=BODY, headers=auth, timeout=30)
            return r.status_code == 200

        _wait(served, "the router serves tiny")
        statuses: list[int] = []
        peaks = {"running": 0.0, "waiting": 0.0}

        def send() -> None:
            r = httpx.post(router + "/v1/chat/completions", json=BODY, headers=auth, timeout=60)
            statuses.append(r.status_code)

        clients = [threading.Thread(target=send) for _ in range(3)]
        for c in clients:
            c.start()
        while any(c.is_alive() for c in clients):  # the engine's own view, all along
            scraped = metrics.scrape(engine)
            for key in peaks:
                peaks[key] = max(peaks[key], metrics.value(scraped, f"vllm:num_requests_{key}"))
        for c in clients:
            c.join()
        assert statuses == [200, 200, 200]
        assert peaks == {"running": 1.0, "waiting": 0.0}  # one at a time: the rest waited here

        check = llmsvc("validate", "-f", str(cfg), "--api-key", "sk-team", cwd=tmp_path)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "router /demand lists every model" in check.stdout
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


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


class _Demand(BaseHTTPRequestHandler):
    """A router stand-in whose ``GET /demand`` answers ``server.answer`` (status, body)."""

    def do_GET(self) -> None:
        status, body = self.server.answer  # type: ignore[attr-defined]
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(body).encode())

    def log_message(self, *_: object) -> None:
        pass


ENTRY = {"in_flight": 0, "queued": 0, "queued_by_priority": {}, "held": 0, "demand": 0}


@pytest.mark.parametrize(
    ("status", "body", "verdict"),
    [
        (200, {"models": {"m": ENTRY}, "total": 0}, "✓"),
        (404, {"error": {"message": "no"}}, "answered 404, expected 200"),
        (200, {"models": {}, "total": 0}, "/demand does not list m"),
        (200, {"models": {"m": {"in_flight": 0}}, "total": 0}, "lacks one of"),
    ],
)
def test_validate_checks_demand(status: int, body: dict[str, Any], verdict: str) -> None:
    server = ThreadingHTTPServer((HOST, 0), _Demand)
    server.answer = (status, body)  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    console = Console(file=io.StringIO(), width=200)
    try:
        validator = Validator(
            router_url=f"http://{HOST}:{server.server_port}", registry_url=None, console=console
        )
        validator.check("demand", partial(validator._demand, ["m"]))
    finally:
        server.shutdown()
        server.server_close()
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert verdict in out
    assert validator.failures == (0 if verdict == "✓" else 1)
