"""``llmsvc router --workers N``: processes sharing the port, restarted, stopped together."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import httpx
import orjson
import pytest
from benchmarks.common.procfs import children

import metrics
from procs import HOST, Proc, ProcGroup, Spawn, free_port, llmsvc_args, pid_alive, wait_until

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def static_services(module_spawn: ProcGroup, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two simulated engines serving ``m``, shared by the tests; their services file."""
    engines = []
    for name in ("e1", "e2"):
        port = free_port()
        proc = module_spawn(
            name, "sim-engine", "--port", str(port), "--model-name", "m", "--engine-id", name,
            "--time-scale", "0",
        )  # fmt: skip
        engines.append((proc, port, name))
    records = [
        {"name": name, "host": HOST, "port": port, "metadata": {"models": ["m"]}}
        for _, port, name in engines
    ]
    static = tmp_path_factory.mktemp("workers") / "services.json"
    static.write_bytes(orjson.dumps({"services": records}))
    for proc, port, _ in engines:
        proc.wait_http(f"http://{HOST}:{port}/health")
    return static


def start_router(spawn: Spawn, static: Path) -> tuple[Proc, str]:
    port = free_port()
    router = spawn(
        "router", "router", "--port", str(port), "--static-services", str(static),
        "--workers", "2", "--health-interval", "0.5",
    )  # fmt: skip
    url = f"http://{HOST}:{port}"
    router.wait_http(f"{url}/health")
    return router, url


def chat(url: str) -> httpx.Response:
    # A new connection each time: the kernel spreads connections over the workers.
    return httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=10.0)


def requests_counted(url: str) -> float:
    return metrics.total(metrics.scrape(url), "llmsvc_router_requests_total")


def test_workers_share_the_port_and_metrics_sum_over_them(
    spawn: Spawn, static_services: Path
) -> None:
    router, url = start_router(spawn, static_services)
    workers = wait_until(lambda: len(children(router.pid)) == 2 and children(router.pid))
    answered = [chat(url) for _ in range(16)]
    assert [r.status_code for r in answered] == [200] * 16
    assert {r.headers["X-Llmsvc-Backend"] for r in answered} == {"e1", "e2"}
    # Every worker counts its own requests; any worker's /metrics shows the sum.
    for _ in range(4):
        assert requests_counted(url) == 16
    assert "llmsvc_router_backend_healthy" in httpx.get(f"{url}/metrics").text

    router.kill()  # SIGKILL of the parent: no orphaned worker keeps the port
    wait_until(lambda: not any(pid_alive(pid) for pid in workers), timeout=15, what="workers gone")


def test_dead_worker_restarted_and_sigterm_stops_all(spawn: Spawn, static_services: Path) -> None:
    router, url = start_router(spawn, static_services)
    first = wait_until(lambda: len(children(router.pid)) == 2 and children(router.pid))
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    renewed = wait_until(
        lambda: (c := children(router.pid)) and len(c) == 2 and victim not in c and c,
        timeout=15,
        what="a new worker in place of the killed one",
    )
    assert all(chat(url).status_code == 200 for _ in range(6))
    assert "exited with -9" in router.log()

    router.signal(signal.SIGTERM)
    assert router.popen.wait(20) == 0
    assert not any(pid_alive(pid) for pid in renewed)
    assert "router workers stopped" in router.log()


def test_port_taken_exits_1() -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run(
            llmsvc_args("router", "--port", str(port), "--workers", "2"),
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert run.returncode == 1
    assert f"cannot listen on {HOST}:{port}" in run.stderr
