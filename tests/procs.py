"""Real processes on 127.0.0.1 for tests: start ``llmsvc`` subcommands, wait, stop.

Used through the ``spawn`` fixture (``conftest.py``), which stops everything
it started when the test ends and prints the logs of a failed test's processes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

# Ports for test processes: a slice per pytest-xdist worker below the ephemeral range,
# the same helper the benchmarks use.
from benchmarks.common.ports import free_port as free_port

HOST = "127.0.0.1"


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: SIGTERM when the test process dies, even by SIGKILL or a timeout that
    skipped the fixtures' teardown, so that no service outlives the test run."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Proc:
    """A started ``llmsvc`` (or other) process with its log file."""

    def __init__(self, name: str, args: Sequence[str], log_path: Path, env: dict[str, str]):
        self.name = name
        self.args = list(args)
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            self.args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.popen.pid, sig)

    def kill(self) -> None:
        """SIGKILL the process alone (children stay, as after a real crash)."""
        self.signal(signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL of the whole process group after ``timeout``."""
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)  # stragglers of the group
        self._log.close()
        return self.popen.returncode

    def wait_http(self, url: str, *, timeout: float = 20.0, status: int = 200) -> httpx.Response:
        """Poll ``url`` until it answers ``status``; fail with the log tail otherwise."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(
                    f"{self.name} exited with {self.popen.returncode}:\n{self.log()[-3000:]}"
                )
            try:
                resp = httpx.get(url, timeout=2.0)
                if resp.status_code == status:
                    return resp
                last = resp.status_code
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.05)
        raise AssertionError(
            f"{self.name}: {url} not {status} after {timeout}s (last: {last!r}):\n"
            f"{self.log()[-3000:]}"
        )


def llmsvc_args(*args: str) -> list[str]:
    return [sys.executable, "-m", "llmsvc", *args]


def wait_until(predicate, *, timeout: float = 10.0, interval: float = 0.05, what: str = ""):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it returns a truthy value, which is returned."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


# --- a whole stack, one component at a time -------------------------------------------------
# Fast timing for tests: health checks and heartbeats every fraction of a second.


def start_registry(spawn, *extra: str, name: str = "registry", port: int | None = None):  # type: ignore[no-untyped-def]
    port = port or free_port()
    proc = spawn(
        name,
        "registry",
        "--port",
        str(port),
        "--health-interval",
        "0.5",
        "--health-timeout",
        "1",
        "--cleanup-interval",
        "0.5",
        *extra,
    )
    url = f"http://{HOST}:{port}"
    proc.wait_http(f"{url}/health")
    return proc, url


def start_router(spawn, registry_url: str | None, *extra: str, name: str = "router"):  # type: ignore[no-untyped-def]
    port = free_port()
    args = [
        "router",
        "--port",
        str(port),
        "--health-interval",
        "0.5",
        "--health-timeout",
        "1",
        "--registry-sync-interval",
        "0.5",
    ]
    if registry_url:
        args += ["--registry-url", registry_url]
    proc = spawn(name, *args, *extra)
    url = f"http://{HOST}:{port}"
    proc.wait_http(f"{url}/health")
    return proc, url


def start_babysitter(  # type: ignore[no-untyped-def]
    spawn,
    registry_url: str | None,
    name: str,
    *extra: str,
    model: str = "sim-model",
    engine_args: tuple[str, ...] = ("--time-scale", "0"),
    wait: bool = True,
):
    port = free_port(pair=True)
    args = [
        "babysitter",
        "--engine",
        "sim",
        "--model",
        model,
        "--name",
        name,
        "--port",
        str(port),
        "--health-interval",
        "0.2",
        "--heartbeat-interval",
        "0.3",
        "--restart-backoff",
        "0.1",
        "--stop-timeout",
        "5",
        *extra,
    ]
    if registry_url:
        args += ["--registry", registry_url]
    proc = spawn(name, *args, "--", "--engine-id", name, *engine_args)
    engine_url, api_url = f"http://{HOST}:{port}", f"http://{HOST}:{port + 1}"
    if wait:
        proc.wait_http(f"{api_url}/health", timeout=30)
    return proc, engine_url, api_url


def registry_record(registry_url: str, name: str) -> dict | None:  # type: ignore[type-arg]
    resp = httpx.get(f"{registry_url}/services/{name}", timeout=5)
    return resp.json() if resp.status_code == 200 else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def port_busy(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((HOST, port)) == 0
