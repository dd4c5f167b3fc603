"""Detached component processes with PID files and timestamped logs under ``logs/``."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


class StartError(Exception):
    """A component did not start or get ready; the message says why in one line."""


@dataclass(frozen=True)
class Running:
    label: str
    pid: int


def pid_file(logs_dir: Path, label: str) -> Path:
    return logs_dir / f"{label}.pid"


def is_llmsvc(pid: int) -> bool:
    """True if ``pid`` is alive and is an llmsvc process (guards against PID reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    if not cmdline:  # a zombie
        return False
    return b"llmsvc" in cmdline


def read_pid(logs_dir: Path, label: str) -> int | None:
    """The PID of a running component, or None (a stale PID file is removed)."""
    path = pid_file(logs_dir, label)
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    if is_llmsvc(pid):
        return pid
    path.unlink(missing_ok=True)
    return None


def running(logs_dir: Path) -> list[Running]:
    """Every component with a live PID file, in stop order: batch service (it sends to the
    router), router, babysitters, registry."""
    found = []
    for path in sorted(logs_dir.glob("*.pid")):
        pid = read_pid(logs_dir, path.stem)
        if pid is not None:
            found.append(Running(path.stem, pid))
    order = {"batch": -1, "router": 0, "registry": 2}
    return sorted(found, key=lambda r: order.get(r.label, 1))


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1" if host in ("0.0.0.0", "") else host, port)) == 0


def start(
    label: str,
    args: list[str],
    logs_dir: Path,
    env: dict[str, str] | None = None,
    *,
    max_bytes: int = 0,
    backups: int = 0,
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start ``llmsvc <args>`` detached (own session), logging to a timestamped file.

    The output goes through a pipe to :mod:`llmsvc.local.logpipe`, detached too, which
    rotates the file at ``max_bytes`` into ``backups`` copies (0: never rotated).
    """
    logs_dir.mkdir(parents=True, exist_ok=True)
    log_path = logs_dir / f"{label}_{time.strftime('%y%m%d%H%M%S')}.log"
    read_end, write_end = os.pipe()
    try:
        subprocess.Popen(
            [sys.executable, "-m", "llmsvc.local.logpipe", str(log_path), str(max_bytes),
             str(backups)],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmsvc", *args],
            stdin=subprocess.DEVNULL,
            stdout=write_end,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
    finally:  # the two processes hold the ends now
        os.close(read_end)
        os.close(write_end)
    pid_file(logs_dir, label).write_text(f"{proc.pid}\n")
    return proc, log_path


def _settle(path: Path, *, within: float = 1.0) -> None:
    """Wait (up to ``within`` seconds) until ``path`` stops growing."""
    deadline, size = time.monotonic() + within, -1
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            now = path.stat().st_size
            if now == size:
                return
            size = now
        time.sleep(0.1)


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in text[-lines:])


def wait_ready(
    proc: subprocess.Popen[bytes],
    url: str,
    log_path: Path,
    *,
    timeout: float,
    label: str,
    headers: dict[str, str] | None = None,
) -> float:
    """Poll ``url`` until 200; raise :class:`StartError` if the process dies or time runs out.

    ``headers`` go with each poll (a bearer token, for a service whose /health needs one).
    """
    started = time.monotonic()
    deadline = started + timeout
    with httpx.Client(timeout=2.0, headers=headers) as client:
        while time.monotonic() < deadline:
            code = proc.poll()
            if code is not None:
                _settle(log_path)  # the log writer may still hold its last lines
                raise StartError(
                    f"{label} exited with status {code} before it was ready; its log "
                    f"{log_path} ends with:\n{_tail(log_path)}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if client.get(url).status_code == 200:
                    return time.monotonic() - started
            time.sleep(0.1)
    raise StartError(f"{label} not ready at {url} after {timeout:.0f}s; see {log_path}")


def stop(pid: int, *, timeout: float) -> str:
    """SIGTERM, then SIGKILL after ``timeout``. Returns how it ended."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_llmsvc(pid):
            return "stopped"
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return "killed"
