"""``llmsvc nginx-config`` against a real registry and sim engines; its output checked by
``nginx -t`` and then served by a real nginx that routes on the ``X-Model`` header."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest

from llmsvc.local.nginxconf import CommandError, nginx_duration, upstream_names
from procs import (
    HOST,
    Spawn,
    free_port,
    llmsvc_args,
    start_registry,
    start_sim_engine,
    wait_until,
)
from tools import require_tool

TOKEN = "nginx-config-token"


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMSVC_")}
    env["LLMSVC_TOKENS_DIR"] = str(tmp_path / "no-tokens")
    return subprocess.run(
        llmsvc_args("nginx-config", *args), capture_output=True, text=True, env=env, timeout=60
    )


def nginx_test(nginx: str, conf: Path, prefix: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [nginx, "-t", "-p", str(prefix), "-c", str(conf), "-g", f"pid {prefix}/nginx.pid;"],
        capture_output=True,
        text=True,
        timeout=30,
    )


def register(registry: str, name: str, port: int, **fields: object) -> None:
    body = {"name": name, "host": HOST, "port": port, **fields}
    resp = httpx.post(
        f"{registry}/services", json=body, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert resp.status_code in (200, 201), resp.text


def test_upstreams_from_the_registry_pass_nginx_t_and_route_by_model(
    spawn: Spawn, tmp_path: Path
) -> None:
    nginx_bin = require_tool("nginx")
    _, registry = start_registry(spawn, token=TOKEN)
    _, port_a = start_sim_engine(spawn, "a")
    _, port_b = start_sim_engine(spawn, "b")
    _, port_c = start_sim_engine(spawn, "c", "--model-name", "Qwen3-32B")
    register(registry, "a", port_a, weight=3, metadata={"models": ["m"]})
    register(registry, "b", port_b, metadata={"models": ["m"], "max_fails": 5, "fail_timeout": 10})
    # The seed's records: metadata.model (singular), fail_timeout in nginx's syntax.
    register(registry, "c", port_c, metadata={"model": "Qwen3-32B", "fail_timeout": "1m"})
    register(registry, "gone", free_port(), metadata={"models": ["m"]})  # nothing listens
    wait_until(
        lambda: (
            {
                r["name"]: r["status"]
                for r in httpx.get(
                    f"{registry}/services", headers={"Authorization": f"Bearer {TOKEN}"}
                ).json()["services"]
            }.get("gone")
            == "unhealthy"
        ),
        timeout=15,
        what="the registry marks 'gone' unhealthy",
    )

    listen = free_port()
    conf = tmp_path / "nginx_distributed.conf"
    done = run(
        tmp_path, "--registry-url", registry, "--token", TOKEN, "-o", str(conf),
        "--listen", f"{HOST}:{listen}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = conf.read_text()
    assert f"server {HOST}:{port_a} weight=3 max_fails=3 fail_timeout=30s;  # a" in text
    assert f"server {HOST}:{port_b} weight=1 max_fails=5 fail_timeout=10s;  # b" in text
    assert f"server {HOST}:{port_c} weight=1 max_fails=3 fail_timeout=1m;  # c" in text
    assert "# gone" not in text  # unhealthy: left out
    assert '"Qwen3-32B" llmsvc_Qwen3_32B;' in text
    check = nginx_test(nginx_bin, conf, tmp_path)
    assert check.returncode == 0, check.stderr

    # The http-context part, included in an http block of one's own.
    snippet = tmp_path / "llmsvc.conf"
    assert run(tmp_path, "--registry-url", registry, "--token", TOKEN, "--snippet",
               "-o", str(snippet), "--listen", str(free_port())).returncode == 0  # fmt: skip
    assert "events" not in snippet.read_text()
    wrapper = tmp_path / "wrapper.conf"
    wrapper.write_text(f"events {{}}\nhttp {{\n    include {snippet};\n}}\n")
    check = nginx_test(nginx_bin, wrapper, tmp_path)
    assert check.returncode == 0, check.stderr

    # A real nginx with the generated file routes each model to its engines.
    nginx = spawn(
        "nginx", nginx_bin, "-p", str(tmp_path), "-c", str(conf),
        "-g", f"daemon off; pid {tmp_path}/nginx.pid; error_log stderr;", raw=True,
    )  # fmt: skip
    base = f"http://{HOST}:{listen}"
    wait_until(lambda: _answers(base), timeout=10, what="nginx listens")
    engines = set()
    for _ in range(8):
        resp = chat(base, "m")
        assert resp.status_code == 200, resp.text
        engines.add(resp.headers["x-llmsvc-engine"])
    assert engines == {"a", "b"}
    resp = chat(base, "Qwen3-32B")
    assert resp.status_code == 200 and resp.headers["x-llmsvc-engine"] == "c"
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream(
        "POST", f"{base}/v1/chat/completions", json=body, headers={"X-Model": "m"}, timeout=10
    ) as streamed:
        lines = [line for line in streamed.iter_lines() if line]
    assert streamed.status_code == 200
    assert lines[0].startswith("data: {") and lines[-1] == "data: [DONE]"
    missing = httpx.post(f"{base}/v1/chat/completions", json={"model": "m", "messages": []})
    assert missing.status_code == 400
    assert missing.json()["error"]["code"] == "model_header_required"
    unknown = chat(base, "nope")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    nginx.stop()


def _answers(base: str) -> bool:
    try:
        httpx.get(base, timeout=1)
    except httpx.HTTPError:
        return False
    return True


def chat(base: str, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return httpx.post(
        f"{base}/v1/chat/completions", json=body, headers={"X-Model": model}, timeout=10
    )


def test_errors_are_one_line(spawn: Spawn, tmp_path: Path) -> None:
    down = run(tmp_path, "--registry-url", f"http://{HOST}:{free_port()}")
    assert down.returncode == 2 and "Traceback" not in down.stderr
    assert down.stderr.count("\n") == 1 and "is it running?" in down.stderr
    bad = run(tmp_path, "--fail-timeout", "soon")
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "llmsvc nginx-config: error: --fail-timeout: 'soon' is not a duration such as 30s, "
        "1m or 500ms"
    )
    _, registry = start_registry(spawn, token=TOKEN)
    refused = run(tmp_path, "--registry-url", registry)
    assert refused.returncode == 2 and "--token" in refused.stderr
    empty = run(tmp_path, "--registry-url", registry, "--token", TOKEN)
    assert empty.returncode == 1
    assert "no healthy engine serving a model at" in empty.stderr


def test_names_and_durations() -> None:
    assert upstream_names(["a/b", "a_b", "a.b"]) == {
        "a/b": "llmsvc_a_b", "a_b": "llmsvc_a_b_2", "a.b": "llmsvc_a_b_3",
    }  # fmt: skip
    assert nginx_duration(30, what="x") == "30s"
    assert nginx_duration(0.5, what="x") == "500ms"
    assert nginx_duration("2m", what="x") == "2m"
    with pytest.raises(CommandError):
        nginx_duration(True, what="x")
