"""The compose wiring, proven without Docker: the commands docker-compose.yml gives each
llmsvc service, run as local processes, make a stack that answers a chat.

Each service's ``entrypoint`` + ``command`` comes from ``docker-compose config``; only
what a container network provides is replaced: every service gets its own free port
on 127.0.0.1 (``LLMSVC_HOST``/``LLMSVC_PORT``, as the images set ``LLMSVC_HOST``), and
``http://<service>:<port>`` / ``--advertise-host <service>`` point there. Services start
in the compose file's ``depends_on`` order, each once its compose health check, run
with the repository's ``images/healthcheck.py``, passes.

The scalable ``babysitter`` service runs its shell entrypoint itself, three times as
``docker compose up --scale babysitter=3`` would, with a stand-in ``hostname`` (the
container's ``hostname -i``: 127.0.0.1 here) and ``llmsvc`` first on PATH; each replica
has its own port, so each registers under its own name.

First the one-shot ``tokens`` service's ``llmsvc tokens`` line makes the tokens in a
local directory standing in for the ``tokens`` volume (its ``chown``/``install`` lines
are about container users, checked in ``test_containers_compose_tokens``).
"""

from __future__ import annotations

import graphlib
import os
import re
import shlex
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from containers import SHELL_ENTRYPOINT, compose_config, llmsvc_component
from procs import HOST, Proc, Spawn, free_port, llmsvc_args, wait_until
from tools import ROOT

pytestmark = pytest.mark.slow

# The port each component listens on in its container (the settings' defaults).
CONTAINER_PORT = {"registry": 8081, "router": 8080, "batch": 8082, "babysitter": 8000}
TOKENS_VOLUME = "/run/llmsvc/tokens"  # where compose mounts the tokens volume
BATCH_VOLUME = "/var/lib/llmsvc/batch"  # where compose mounts the batch service's data
IN_IMAGE = {
    "/opt/llmsvc/bin/python": sys.executable,
    "/opt/llmsvc/healthcheck.py": str(ROOT / "images" / "healthcheck.py"),
}


def start_order(services: dict[str, Any]) -> list[list[str]]:
    """Groups of services to start together, each group after the one before is healthy."""
    graph = {name: set(s.get("depends_on", {})) & set(services) for name, s in services.items()}
    sorter = graphlib.TopologicalSorter(graph)
    sorter.prepare()
    groups = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready())
        groups.append(ready)
        sorter.done(*ready)
    return groups


SCALE = {"babysitter": 3}  # as `docker compose up --scale babysitter=3`


def local_ports(services: dict[str, Any]) -> dict[str, list[int]]:
    """service -> the local ports standing in for its replicas' container port."""
    return {
        name: [free_port(pair=llmsvc_component(service) == "babysitter")
               for _ in range(SCALE.get(name, 1))]
        for name, service in services.items()
    }  # fmt: skip


def stand_ins(directory: Path) -> Path:
    """A bin directory with what a container has and this machine lacks or has otherwise:
    ``hostname -i`` says 127.0.0.1, ``llmsvc`` is this checkout's."""
    directory.mkdir()
    scripts = {
        "hostname": f'[ "$1" = -i ] && echo {HOST} || echo local',
        "llmsvc": f'exec {shlex.quote(sys.executable)} -m llmsvc "$@"',
    }
    for name, body in scripts.items():
        (directory / name).write_text(f"#!/bin/sh\n{body}\n")
        (directory / name).chmod(0o755)
    return directory


def argv_of(service: dict[str, Any], command: list[str]) -> tuple[list[str], bool]:
    """What to run for ``service`` with its localized ``command``: the ``llmsvc`` arguments
    (raw False), or its shell entrypoint's argv (raw True; compose's ``$$`` unescaped)."""
    entrypoint = service["entrypoint"]
    if entrypoint[:2] == SHELL_ENTRYPOINT:
        return [*entrypoint[:2], entrypoint[2].replace("$$", "$"), *entrypoint[3:], *command], True
    return [*entrypoint[1:], *command], False


def make_tokens(tokens_service: dict[str, Any], directory: Path) -> None:
    """Run the ``tokens`` service's ``llmsvc tokens`` line with ``directory`` as the volume."""
    [script] = tokens_service["command"]
    [line] = [line for line in script.splitlines() if line.startswith("llmsvc ")]
    args = [directory.as_posix() if a == TOKENS_VOLUME else a for a in shlex.split(line)[1:]]
    assert args == ["tokens", "--dir", directory.as_posix()], line
    subprocess.run(llmsvc_args(*args), check=True, capture_output=True, timeout=60)


def localize(
    args: list[str], services: dict[str, Any], ports: dict[str, list[int]], tokens: Path
) -> list[str]:
    """Service hostnames and container ports -> 127.0.0.1 and the local ports; the tokens
    volume -> the local tokens directory."""

    def url(match: re.Match[str]) -> str:
        name, port = match.group(1), int(match.group(2))
        offset = port - CONTAINER_PORT[str(llmsvc_component(services[name]))]
        return f"http://{HOST}:{ports[name][0] + offset}"

    names = "|".join(re.escape(name) for name in services)
    out = [re.sub(rf"http://({names}):(\d+)", url, arg) for arg in args]
    out = [tokens.as_posix() + a.removeprefix(TOKENS_VOLUME) if a.startswith(TOKENS_VOLUME + "/")
           else a for a in out]  # fmt: skip
    return [
        HOST if i > 0 and out[i - 1] == "--advertise-host" and arg in services else arg
        for i, arg in enumerate(out)
    ]


def _healthy_or_exited(
    service: dict[str, Any], env: dict[str, str], tokens: Path, proc: Proc
) -> bool:
    return healthy(service, env, tokens) or not proc.alive()


def healthy(service: dict[str, Any], env: dict[str, str], tokens: Path) -> bool:
    """The service's compose health check, run here (the tokens volume: ``tokens``)."""
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD"
    argv = [IN_IMAGE.get(arg, arg) for arg in test[1:]]
    argv = [tokens.as_posix() + a.removeprefix(TOKENS_VOLUME) if a.startswith(TOKENS_VOLUME + "/")
            else a for a in argv]  # fmt: skip
    proc = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, timeout=10)
    return proc.returncode == 0


def test_compose_commands_make_a_working_stack(spawn: Spawn, tmp_path: Path) -> None:
    config = compose_config()["services"]
    tokens = tmp_path / "tokens"
    make_tokens(config["tokens"], tokens)
    services = {name: service for name, service in config.items() if llmsvc_component(service)}
    assert set(services) == {"registry", "router", "batch", "babysitter"}
    ports = local_ports(services)
    path = f"{stand_ins(tmp_path / 'bin')}:{os.environ['PATH']}"
    groups = start_order(services)
    assert groups == [["registry"], ["router"], ["babysitter", "batch"]]
    for group in groups:
        started = {}
        for name in group:
            service = services[name]
            command = localize(service.get("command") or [], services, ports, tokens)
            command = [str(tmp_path / "batch-data") if a == BATCH_VOLUME else a for a in command]
            argv, raw = argv_of(service, command)
            for replica, port in enumerate(ports[name], start=1):
                env = {
                    **(service.get("environment") or {}),
                    "LLMSVC_HOST": HOST,
                    "LLMSVC_PORT": str(port),
                    **({"PATH": path} if raw else {}),
                }
                label = f"{name}-{replica}" if len(ports[name]) > 1 else name
                started[label] = (spawn(label, *argv, env=env, raw=raw), env, service)
        for label, (proc, env, service) in started.items():
            wait_until(
                partial(_healthy_or_exited, service, env, tokens, proc),
                timeout=40,
                interval=0.2,
                what=f"{label}'s compose health check",
            )
            assert proc.alive(), f"{label} exited:\n{proc.log()[-3000:]}"

    router = f"http://{HOST}:{ports['router'][0]}"
    sim = services["babysitter"]["command"]
    model = sim[sim.index("--model") + 1]
    models = wait_until(
        lambda: [m["id"] for m in httpx.get(f"{router}/v1/models", timeout=5).json()["data"]],
        timeout=30,
        what="the router's /v1/models",
    )
    assert models == [model]
    engines = set()
    for _ in range(6):
        resp = httpx.post(
            f"{router}/v1/chat/completions",
            json={
                "model": model,
                "messages": [{"role": "user", "content": "Hello"}],
                "max_tokens": 4,
            },
            timeout=30,
        )
        assert resp.status_code == 200, resp.text
        engines.add(resp.json()["system_fingerprint"])
    # Each replica registered its engine under its own address and port (a container's:
    # babysitter@<its IP>:8000); round robin uses all three.
    replicas = {f"babysitter@{HOST}:{port}" for port in ports["babysitter"]}
    assert len(replicas) == 3
    assert engines == replicas
    registry = f"http://{HOST}:{ports['registry'][0]}"
    write = {"Authorization": f"Bearer {(tokens / 'registry-token').read_text().strip()}"}
    answer = httpx.get(f"{registry}/services", headers=write, timeout=5).json()
    names = {s["name"] for s in answer["services"]}
    assert replicas <= names
    # The router's admin views need the router's admin token from the tokens volume.
    admin = {"Authorization": f"Bearer {(tokens / 'router-admin-token').read_text().strip()}"}
    for path in ("/stats", "/services", "/metrics"):
        assert httpx.get(f"{router}{path}", timeout=5).status_code == 401, path
        assert httpx.get(f"{router}{path}", headers=admin, timeout=5).status_code == 200, path
    # The batch service answers through the router (which forwards with the batch token), and
    # only with that token when asked directly: the health check above sent it.
    listed = httpx.get(f"{router}/v1/batches", timeout=10)
    assert listed.status_code == 200, listed.text
    assert listed.json()["object"] == "list"
    batch = f"http://{HOST}:{ports['batch'][0]}"
    assert httpx.get(f"{batch}/v1/batches", timeout=5).status_code == 401
    assert (tmp_path / "batch-data").is_dir()  # the batch-data volume's stand-in
