"""`llmsvc up` / `status` / `validate` / `down` as a user runs them, and the openai client."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from procs import HOST, free_port, pid_alive, port_busy

STACK = """
logs_dir: {logs}
startup_timeout: 60
registry: {{port: {registry}, args: [--health-interval, "0.5"]}}
router: {{port: {router}, args: [--health-interval, "0.5"]}}
batch: {{enabled: false}}
babysitters:
  - {{name: sim-a, engine: sim, model: tiny, port: {a}, engine_args: [--time-scale, "0.01"]}}
  - {{name: sim-b, engine: sim, model: tiny, port: {b}, engine_args: [--time-scale, "0.01"]}}
"""


def llmsvc(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "llmsvc", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def engine_pids(api_ports: list[int]) -> list[int]:
    return [httpx.get(f"http://{HOST}:{p}/status").json()["pid"] for p in api_ports]


def test_up_status_validate_down_with_a_file(tmp_path: Path) -> None:
    ports = {"registry": free_port(), "router": free_port(), "a": free_port(pair=True)}
    ports["b"] = free_port(pair=True)
    while ports["b"] in (ports["a"], ports["a"] + 1):
        ports["b"] = free_port(pair=True)
    cfg = tmp_path / "llmsvc.yaml"
    cfg.write_text(STACK.format(logs=tmp_path / "logs", **ports))
    try:
        up = llmsvc("up", "-f", str(cfg), cwd=tmp_path)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "curl" in up.stdout  # it says how to query the stack
        logs = tmp_path / "logs"
        for label in ("registry", "router", f"babysitter_{ports['a']}", f"babysitter_{ports['b']}"):
            assert (logs / f"{label}.pid").exists(), label
            assert list(logs.glob(f"{label}_*.log")), label

        status = llmsvc("status", "-f", str(cfg), cwd=tmp_path)
        assert status.returncode == 0, status.stdout
        again = llmsvc("up", "-f", str(cfg), cwd=tmp_path)
        assert again.returncode == 0
        assert again.stdout.count("already running (pid") == 4

        check = llmsvc("validate", "-f", str(cfg), cwd=tmp_path)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "✗" not in check.stdout
        engines = engine_pids([ports["a"] + 1, ports["b"] + 1])
    finally:
        down = llmsvc("down", "-f", str(cfg), cwd=tmp_path)
    assert down.returncode == 0, down.stdout
    assert not any(pid_alive(pid) for pid in engines), "an engine outlived llmsvc down"
    assert not list((tmp_path / "logs").glob("*.pid"))
    stopped = llmsvc("status", "-f", str(cfg), cwd=tmp_path)
    assert stopped.returncode == 1


ONE_ENGINE = """
logs_dir: {logs}
startup_timeout: 60
registry: {{port: {registry}}}
router: {{port: {router}}}
batch: {{enabled: false}}
babysitters:
  - {{name: sim-a, engine: sim, model: tiny, port: {a}, engine_args: [--time-scale, "0.01"]}}
"""


def token_files(logs: Path) -> dict[str, str]:
    """The stack's tokens by file name, after checking the modes: a 0700 dir of 0600 files."""
    directory = logs / "tokens"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    names = ("registry-token", "registry-admin-token", "router-admin-token")
    assert sorted(p.name for p in directory.iterdir()) == sorted(names)
    for name in names:
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600, name
    return {name: (directory / name).read_text().strip() for name in names}


def assert_refused(resp: httpx.Response) -> None:
    assert resp.status_code == 401, resp.text
    assert resp.json()["error"]["code"] == "invalid_token"
    assert resp.headers["www-authenticate"].startswith("Bearer")


def test_up_is_authenticated_by_default(tmp_path: Path) -> None:
    ports = {"registry": free_port(), "router": free_port(), "a": free_port(pair=True)}
    cfg = tmp_path / "llmsvc.yaml"
    logs = tmp_path / "logs"
    cfg.write_text(ONE_ENGINE.format(logs=logs, **ports))
    registry, router = f"http://{HOST}:{ports['registry']}", f"http://{HOST}:{ports['router']}"
    probe = {"name": "intruder", "host": HOST, "port": 9, "type": "openai-api"}
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
    try:
        up = llmsvc("up", "-f", str(cfg), cwd=tmp_path)
        assert up.returncode == 0, up.stdout + up.stderr
        assert_refused(httpx.post(f"{registry}/services", json=probe))
        assert_refused(httpx.get(f"{registry}/services"))
        assert_refused(httpx.get(f"{router}/stats"))
        tokens = token_files(logs)
        assert not any(t in up.stdout + up.stderr for t in tokens.values())
        listed = httpx.get(
            f"{registry}/services",
            params={"type": "openai-api"},
            headers={"Authorization": f"Bearer {tokens['registry-token']}"},
        )
        assert [s["name"] for s in listed.json()["services"]] == ["sim-a"]
        stats = httpx.get(
            f"{router}/stats", headers={"Authorization": f"Bearer {tokens['router-admin-token']}"}
        )
        assert stats.status_code == 200, stats.text
        assert httpx.post(f"{router}/v1/chat/completions", json=chat, timeout=30).status_code == 200
        assert llmsvc("down", "-f", str(cfg), cwd=tmp_path).returncode == 0
        again = llmsvc("up", "-f", str(cfg), cwd=tmp_path)
        assert again.returncode == 0, again.stdout + again.stderr
        assert token_files(logs) == tokens  # a restart keeps the tokens
        assert httpx.post(f"{router}/v1/chat/completions", json=chat, timeout=30).status_code == 200
        check = llmsvc("validate", "-f", str(cfg), cwd=tmp_path)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "refuses" in check.stdout  # it checked that anonymous requests are refused
    finally:
        down = llmsvc("down", "-f", str(cfg), cwd=tmp_path)
    assert down.returncode == 0, down.stdout


DEMO_PORTS = (8080, 8081, 8082, 8100, 8101, 8200, 8201)


@pytest.mark.skipif(
    any(port_busy(p) for p in DEMO_PORTS),
    reason=f"the demo's fixed ports {DEMO_PORTS} are in use on this machine",
)
def test_demo_stack_serves_the_openai_client(tmp_path: Path) -> None:
    """The README's `make run` is `llmsvc up` with no file: the official client works on it."""
    import openai

    try:
        up = llmsvc("up", cwd=tmp_path)
        assert up.returncode == 0, up.stdout + up.stderr
        client = openai.OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="unused")
        assert [m.id for m in client.models.list()] == ["sim-model"]
        reply = client.chat.completions.create(
            model="sim-model", messages=[{"role": "user", "content": "Hello"}], max_tokens=5
        )
        assert reply.choices[0].message.content
        assert reply.usage is not None
        assert reply.usage.completion_tokens == 5
        pieces = [
            chunk.choices[0].delta.content or ""
            for chunk in client.chat.completions.create(
                model="sim-model",
                messages=[{"role": "user", "content": "Hi"}],
                max_tokens=5,
                stream=True,
            )
            if chunk.choices
        ]
        assert len([p for p in pieces if p]) == 5
        embedding = client.embeddings.create(model="sim-model", input="hello")
        assert len(embedding.data[0].embedding) > 0
        check = llmsvc("validate", cwd=tmp_path)
        assert check.returncode == 0, check.stdout
    finally:
        down = llmsvc("down", cwd=tmp_path)
    assert down.returncode == 0
    assert not any(port_busy(p) for p in DEMO_PORTS)
