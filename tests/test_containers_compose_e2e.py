"""``docker compose up --scale babysitter=3`` for real: build the images, wait for every
health check, chat through the router (each replica answers under its own name), see
Prometheus scrape every replica under that name and Grafana serve the dashboards, ``down -v``.

Runs only where a Docker engine answers (``make images`` and compose need one); skipped
elsewhere with the reason. The first run builds the images (minutes).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator

import httpx
import pytest

from procs import free_port, wait_until
from tools import ROOT, docker_available, tool_path

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

WHY_NOT = docker_available()
REPLICAS = 3


def compose_command() -> list[str]:
    """``docker compose`` (the plugin) or the standalone ``docker-compose``."""
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    standalone = tool_path("docker-compose")
    if standalone is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    return [standalone]


@pytest.fixture
def stack() -> Iterator[dict[str, str]]:
    ports = {
        "LLMSVC_ROUTER_PORT": str(free_port()),
        "LLMSVC_REGISTRY_PORT": str(free_port()),
        "LLMSVC_PROMETHEUS_PORT": str(free_port()),
        "LLMSVC_GRAFANA_PORT": str(free_port()),
        "LLMSVC_ALERTMANAGER_PORT": str(free_port()),
    }
    base = [*compose_command(), "-p", f"llmsvc-test-{os.getpid()}", "-f", "docker-compose.yml"]
    # Only these overrides: a developer's own LLMSVC_* (say LLMSVC_MODEL) must not change the stack.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMSVC_")} | ports

    def run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*base, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )

    try:
        up = run(
            "up", "-d", "--build", "--wait", "--wait-timeout", "300", "--scale",
            f"babysitter={REPLICAS}", timeout=1100,
        )  # fmt: skip
        if up.returncode != 0:
            logs = run("logs", "--no-color", "--tail", "50", timeout=60).stdout
            pytest.fail(f"docker compose up failed:\n{up.stderr[-4000:]}\n{logs[-6000:]}")
        yield ports
    finally:
        run("down", "-v", "--remove-orphans", timeout=180)


@pytest.mark.skipif(WHY_NOT is not None, reason=f"needs a Docker engine: {WHY_NOT}")
def test_compose_up_serves_chat_metrics_and_dashboards(stack: dict[str, str]) -> None:
    router = f"http://127.0.0.1:{stack['LLMSVC_ROUTER_PORT']}"
    models = httpx.get(f"{router}/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["sim-model"]
    engines = set()
    for _ in range(2 * REPLICAS):
        reply = httpx.post(
            f"{router}/v1/chat/completions",
            json={"model": "sim-model", "messages": [{"role": "user", "content": "Hello"}]},
            timeout=60,
        )
        assert reply.status_code == 200, reply.text
        engines.add(reply.json()["system_fingerprint"])
    # Round robin over every replica, each under its own name (babysitter@<its IP>:8000).
    assert len(engines) == REPLICAS, engines
    assert all(re.fullmatch(r"babysitter@\d+\.\d+\.\d+\.\d+:8000", e) for e in engines), engines
    # The router's admin views need the admin token (only Prometheus has it: its targets
    # are all up below); the registry refuses anonymous reads.
    for path in ("/stats", "/services", "/metrics"):
        assert httpx.get(f"{router}{path}", timeout=10).status_code == 401, path
    registry = f"http://127.0.0.1:{stack['LLMSVC_REGISTRY_PORT']}"
    assert httpx.get(f"{registry}/services", timeout=10).status_code == 401

    prometheus = f"http://127.0.0.1:{stack['LLMSVC_PROMETHEUS_PORT']}"

    def all_targets_up() -> bool:
        targets = httpx.get(f"{prometheus}/api/v1/targets", timeout=10).json()["data"]
        active = targets["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)

    wait_until(all_targets_up, timeout=60, interval=1, what="every Prometheus target up")
    active = httpx.get(f"{prometheus}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    for job in ("llmsvc-engine", "llmsvc-babysitter"):
        labelled = {t["labels"].get("backend") for t in active if t["labels"]["job"] == job}
        assert labelled == engines, (job, labelled)  # the dashboards join on it
    rules = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    assert rules, "the alert rules are loaded"
    # The batch service answers through the router (the llmsvc-batch target is up above,
    # scraped with its token), and Prometheus found compose's Alertmanager.
    batches = httpx.get(f"{router}/v1/batches", timeout=10)
    assert batches.status_code == 200, batches.text
    assert batches.json()["object"] == "list"
    assert {t["labels"]["job"] for t in active} >= {"llmsvc-batch", "llmsvc-router"}
    managers = httpx.get(f"{prometheus}/api/v1/alertmanagers", timeout=10).json()["data"]
    [manager] = managers["activeAlertmanagers"]
    assert manager["url"].endswith(":9093/api/v2/alerts"), manager
    alertmanager = f"http://127.0.0.1:{stack['LLMSVC_ALERTMANAGER_PORT']}"
    assert httpx.get(f"{alertmanager}/-/ready", timeout=10).status_code == 200

    grafana = f"http://127.0.0.1:{stack['LLMSVC_GRAFANA_PORT']}"
    found = httpx.get(f"{grafana}/api/search", params={"type": "dash-db"}, timeout=10).json()
    assert len(found) >= 3, found
