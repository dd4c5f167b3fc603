"""Helpers of the babysitter's process tests: start one, read its state, read the registry."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Protocol

import httpx

from procs import HOST, Proc, free_port, wait_until

STANDINS = Path(__file__).resolve().parent

# Short intervals so that every transition takes a fraction of a second.
FAST = (
    "--health-interval", "0.2",
    "--heartbeat-interval", "0.3",
    "--restart-backoff", "0.1",
    "--stop-timeout", "2",
)  # fmt: skip


class Spawn(Protocol):
    def __call__(
        self, name: str, *args: str, env: dict[str, str] | None = None, raw: bool = False
    ) -> Proc: ...


def standin_env(record: Path) -> dict[str, str]:
    """PATH and PYTHONPATH that put the stand-in engines first; argv recorded to ``record``."""
    venv_bin = str(Path(sys.executable).parent)
    return {
        "PATH": os.pathsep.join([str(STANDINS), venv_bin, os.environ.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join([str(STANDINS / "pylib"), str(STANDINS)]),
        "LLMSVC_STANDIN_RECORD": str(record),
    }


def start_registry(spawn: Spawn) -> str:
    port = free_port()
    proc = spawn("registry", "registry", "--port", str(port))
    url = f"http://{HOST}:{port}"
    proc.wait_http(url + "/health")
    return url


def start_babysitter(
    spawn: Spawn, *args: str, env: dict[str, str] | None = None, name: str = "babysitter"
) -> tuple[Proc, int, str]:
    """A babysitter on a free port pair: (process, engine port, babysitter API URL)."""
    port = free_port(pair=True)
    ours, sep, engine = _split(args)
    argv = ["babysitter", "--port", str(port), *FAST, *ours, *sep, *engine]
    proc = spawn(name, *argv, env=env)
    return proc, port, f"http://{HOST}:{port + 1}"


def _split(args: tuple[str, ...]) -> tuple[list[str], list[str], list[str]]:
    if "--" in args:
        i = args.index("--")
        return list(args[:i]), ["--"], list(args[i + 1 :])
    return list(args), [], []


def status(api: str) -> dict[str, Any]:
    resp = httpx.get(api + "/status", timeout=5)
    resp.raise_for_status()
    data: dict[str, Any] = resp.json()
    return data


def wait_state(api: str, state: str, *, timeout: float = 20.0) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        try:
            data = status(api)
        except httpx.HTTPError:
            return None
        return data if data["state"] == state else None

    result: dict[str, Any] = wait_until(check, timeout=timeout, what=f"state {state}")
    return result


def records(registry: str) -> dict[str, dict[str, Any]]:
    resp = httpx.get(registry + "/services", timeout=5)
    resp.raise_for_status()
    return {r["name"]: r for r in resp.json()["services"]}


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
