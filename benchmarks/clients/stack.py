"""The llmsvc stack the benchmark clients drive, as local processes.

A registry (anonymous writes: nothing here is reachable from outside), a
router following it, and babysitters each launching one engine: two of the
simulated engine, or one real ``llama-server`` with the cached SmolLM2 model.
:func:`running` yields the router's URL and the first engine's URL (the direct
target) once the router lists the model with every engine behind it, and stops
everything on exit. Logs go to ``work/<name>.log``.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from benchmarks.common.ports import free_port
from benchmarks.common.processes import last_line, start, stop
from benchmarks.harness.targets import Unavailable

LLMSVC = [sys.executable, "-m", "llmsvc"]
HOST = "127.0.0.1"


@dataclass(frozen=True)
class Fleet:
    """What the babysitters launch: ``engines`` copies of one engine command."""

    name: str  # "sim" or "llama.cpp": the row label of the table
    engine: str  # the babysitter's --engine
    model: str  # its --model
    engines: int
    engine_args: tuple[str, ...] = ()  # after '--'
    startup_s: float = 60.0


def sim_fleet(engines: int = 2) -> Fleet:
    return Fleet("sim", "sim", "sim-model", engines, ("--seed", "1"))


LLAMA_ARGS = ("-c", "2048", "-np", "2", "--metrics", "-t", "1")
"""A small context, 2 slots, one thread: on 2 cores shared with the client (guidellm's
workers take most of one) llama.cpp's default 2 threads wait on each other; measured under
load, ``-t 1`` prefilled 2x and decoded 7x faster than ``-t 2`` (65 and 20 tokens/s, against
33 and 2.7)."""


def llama_fleet(gguf: Path) -> Fleet:
    """One babysitter of the real ``llama-server`` (on ``PATH``: :func:`engine_env`)."""
    return Fleet("llama.cpp", "llama.cpp", str(gguf), 1, LLAMA_ARGS, 180.0)


@dataclass(frozen=True)
class Stack:
    router: str  # base URL
    engine: str  # base URL of the first engine (the direct target)
    model: str  # the served model name
    work: Path


def _wait(proc: subprocess.Popen[bytes], log: Path, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Unavailable(f"{log.stem} exited {proc.returncode}: {last_line(log)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise Unavailable(f"{log.stem} not up at {url} within {timeout:.0f} s: {last_line(log)}")


def _served(router: str, engines: int, timeout: float) -> str:
    """The model name once the router sends to ``engines`` healthy engines of it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            health = httpx.get(f"{router}/health", timeout=2).json()
            models = httpx.get(f"{router}/v1/models", timeout=2).json()["data"]
            if models and health["healthy_backends"] >= engines:
                return str(models[0]["id"])
        time.sleep(0.5)
    raise Unavailable(f"the router did not list {engines} healthy engines within {timeout:.0f} s")


def _babysitter(
    fleet: Fleet, i: int, registry: str, work: Path, env: tuple[tuple[str, str], ...]
) -> tuple[subprocess.Popen[bytes], Path, int]:
    port = free_port(pair=True)
    log = work / f"babysitter-{fleet.name}-{i}.log"
    command = [
        *LLMSVC, "babysitter", "--engine", fleet.engine, "--model", fleet.model,
        "--port", str(port), "--name", f"{fleet.name}-{i}", "--registry", registry,
        "--log-dir", str(work / f"engine-{fleet.name}-{i}"), "--startup-timeout",
        str(fleet.startup_s), "--drain-timeout", "2", "--stop-timeout", "5",
        "--", *fleet.engine_args,
    ]  # fmt: skip
    return start(command, log, env), log, port


@contextlib.contextmanager
def running(fleet: Fleet, work: Path, env: tuple[tuple[str, str], ...] = ()) -> Iterator[Stack]:
    """The stack up, with every engine healthy behind the router; stopped on exit."""
    work.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        registry, router = free_port(), free_port()
        reg_url, router_url = f"http://{HOST}:{registry}", f"http://{HOST}:{router}"
        log = work / "registry.log"
        procs.append(start([*LLMSVC, "registry", "--port", str(registry),
                            "--allow-anonymous-writes", "--state-file", str(work / "state.json")],
                           log))  # fmt: skip
        _wait(procs[-1], log, f"{reg_url}/health", 30)
        log = work / "router.log"
        procs.append(start([*LLMSVC, "router", "--port", str(router), "--registry-url", reg_url,
                            "--registry-sync-interval", "0.5"], log))  # fmt: skip
        _wait(procs[-1], log, f"{router_url}/health", 30)
        ports = []
        for i in range(fleet.engines):
            proc, log, port = _babysitter(fleet, i, reg_url, work, env)
            procs.append(proc)
            ports.append(port)
        for proc, port in zip(procs[2:], ports, strict=True):
            _wait(proc, work / f"babysitter-{fleet.name}-{ports.index(port)}.log",
                  f"http://{HOST}:{port}/health", fleet.startup_s)  # fmt: skip
        model = _served(router_url, fleet.engines, 30)
        yield Stack(router_url, f"http://{HOST}:{ports[0]}", model, work)
    finally:
        for proc in reversed(procs):
            stop(proc)


def router_requests(router: str) -> dict[str, float]:
    """``llmsvc_router_requests_total`` by status, summed over the other labels."""
    text = httpx.get(f"{router}/metrics", timeout=5).text
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("llmsvc_router_requests_total{"):
            labels, _, value = line.rpartition(" ")
            status = _label(labels, "status") or "?"
            totals[status] = totals.get(status, 0.0) + float(value)
    return totals


def _label(labels: str, name: str) -> str | None:
    for part in labels[labels.index("{") + 1 : labels.rindex("}")].split(","):
        key, _, value = part.partition("=")
        if key.strip() == name:
            return value.strip().strip('"')
    return None


def engine_env(paths: Sequence[Path]) -> tuple[tuple[str, str], ...]:
    """``PATH`` with the directories of ``paths`` in front (the babysitter runs
    ``llama-server`` from ``PATH``)."""
    import os

    front = ":".join(str(p.parent) for p in paths)
    return (("PATH", f"{front}:{os.environ.get('PATH', '')}"),)
