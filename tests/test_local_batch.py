"""``llmsvc up`` runs the batch service next to the router, sharing ``batch-token`` with it."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from llmsvc.local.config import ConfigError, StackConfig, demo_config, load
from llmsvc.local.stack import Component, components, prepare_tokens, token_names
from llmsvc.local.validate import Validator
from procs import HOST, Spawn, free_port, pid_alive, start_router


def value(args: list[str], flag: str) -> str:
    assert args.count(flag) == 1, (flag, args)
    return args[args.index(flag) + 1]


def by_label(cfg: StackConfig) -> dict[str, Component]:
    return {c.label: c for c in components(cfg)}


def stack_file(tmp_path: Path, text: str) -> StackConfig:
    path = tmp_path / "llmsvc.yaml"
    path.write_text(text)
    return load(path)


def test_the_demo_runs_the_batch_service_after_the_router(tmp_path: Path) -> None:
    cfg = demo_config()
    cfg.logs_dir = str(tmp_path / "logs")
    labels = [c.label for c in components(cfg)]
    assert labels == ["registry", "router", "batch", "babysitter_8100", "babysitter_8200"]
    comps = by_label(cfg)
    token = str(tmp_path / "logs" / "tokens" / "batch-token")
    router, batch = comps["router"].args, comps["batch"]
    assert value(router, "--batch-url") == "http://127.0.0.1:8082"
    assert value(router, "--batch-token-file") == token
    assert batch.args[0] == "batch"
    assert value(batch.args, "--port") == "8082"
    assert value(batch.args, "--router-url") == "http://127.0.0.1:8080"
    assert value(batch.args, "--token-file") == token
    assert value(batch.args, "--data-dir") == str(tmp_path / "logs" / "batch")
    assert batch.env == {}  # the token is in a file, never in the environment
    assert batch.health_url == "http://127.0.0.1:8082/health"
    assert "batch" in token_names(cfg)
    assert prepare_tokens(cfg) is None
    secret = (tmp_path / "logs" / "tokens" / "batch-token").read_text().strip()
    assert batch.health_headers() == {"Authorization": f"Bearer {secret}"}


def test_the_batch_section_sets_port_host_data_dir_and_flags(tmp_path: Path) -> None:
    cfg = stack_file(
        tmp_path,
        "router: {port: 9080}\n"
        "batch: {port: 9082, host: 0.0.0.0, data_dir: /srv/batch, "
        "args: [--max-concurrency, '8']}\n",
    )
    comps = by_label(cfg)
    assert value(comps["router"].args, "--batch-url") == "http://127.0.0.1:9082"
    batch = comps["batch"].args
    assert value(batch, "--host") == "0.0.0.0"
    assert value(batch, "--router-url") == "http://127.0.0.1:9080"
    assert value(batch, "--data-dir") == "/srv/batch"
    assert batch[-2:] == ["--max-concurrency", "8"]


def test_batch_disabled_or_without_a_router_here_is_not_run(tmp_path: Path) -> None:
    off = stack_file(tmp_path, "batch: {enabled: false}\n")
    assert "batch" not in by_label(off)
    assert "--batch-url" not in by_label(off)["router"].args
    assert "--batch-token-file" not in by_label(off)["router"].args
    assert "batch" not in token_names(off)
    engines_only = stack_file(
        tmp_path,
        'registry: {enabled: false, url: "http://10.0.0.1:8081", token: t}\n'
        'router: {enabled: false, url: "http://10.0.0.1:8080"}\n'
        "babysitters: [{engine: sim, model: m, port: 9000}]\n",
    )
    assert [c.label for c in components(engines_only)] == ["babysitter_9000"]


def test_a_batch_port_used_twice_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="port 8080 is used twice: by the router and by the b"):
        stack_file(tmp_path, "batch: {port: 8080}\n")
    with pytest.raises(ConfigError, match=r"batch\.nope"):
        stack_file(tmp_path, "batch: {nope: 1}\n")
    stack_file(tmp_path, "batch: {port: 8080, enabled: false}\n")  # not run: no clash


def test_validate_fails_a_router_without_the_batch_service(spawn: Spawn) -> None:
    _, router = start_router(spawn, None)  # no --batch-url
    out = io.StringIO()
    validator = Validator(
        router_url=router, registry_url=None, batch=True, console=Console(file=out, width=200)
    )
    validator.check_batch()
    assert validator.failures == 1, out.getvalue()
    assert "✗ router reaches the batch service (GET /v1/batches): " in out.getvalue()
    assert "404" in out.getvalue()


STACK = """
logs_dir: {logs}
startup_timeout: 60
registry: {{port: {registry}}}
router: {{port: {router}}}
batch: {{port: {batch}, args: [--tick, "0.2"]}}
babysitters:
  - {{name: sim-a, engine: sim, model: tiny, port: {a}, engine_args: [--time-scale, "0.01"]}}
"""


def llmsvc(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmsvc", *args],
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_up_starts_the_batch_service_behind_the_router_and_down_stops_it(tmp_path: Path) -> None:
    ports = {"registry": free_port(), "router": free_port(), "batch": free_port()}
    ports["a"] = free_port(pair=True)
    logs = tmp_path / "logs"
    cfg = tmp_path / "llmsvc.yaml"
    cfg.write_text(STACK.format(logs=logs, **ports))
    router, batch = f"http://{HOST}:{ports['router']}", f"http://{HOST}:{ports['batch']}"
    try:
        up = llmsvc("up", "-f", str(cfg), cwd=tmp_path)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "batch service ready" in up.stdout
        assert f"curl {router}/v1/batches" in up.stdout
        pid = int((logs / "batch.pid").read_text())
        token = (logs / "tokens" / "batch-token").read_text().strip()
        assert token not in up.stdout + up.stderr
        listed = httpx.get(f"{router}/v1/batches", timeout=10)  # forwarded with the token
        assert listed.status_code == 200, listed.text
        assert listed.json()["object"] == "list"
        files = httpx.get(f"{router}/v1/files", timeout=10)
        assert files.status_code == 200, files.text
        assert httpx.get(f"{batch}/v1/batches", timeout=10).status_code == 401  # token needed
        health = httpx.get(
            f"{batch}/health", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert health.status_code == 200, health.text
        assert (logs / "batch").is_dir()  # its data dir, under the logs dir by default
        status = llmsvc("status", "-f", str(cfg), cwd=tmp_path)
        assert status.returncode == 0, status.stdout  # healthy: status sends the token
        assert "batch service" in status.stdout
        check = llmsvc("validate", "-f", str(cfg), cwd=tmp_path)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "✓ router reaches the batch service (GET /v1/batches)" in check.stdout
    finally:
        down = llmsvc("down", "-f", str(cfg), cwd=tmp_path)
    assert down.returncode == 0, down.stdout
    assert "batch (pid" in down.stdout
    assert not pid_alive(pid)
    assert not list(logs.glob("*.pid"))
