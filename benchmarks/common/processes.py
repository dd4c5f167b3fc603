"""The harnesses' processes: each in its own process group, logging to a file.

A proxy under test may start workers or children of its own; its own process
group lets :func:`stop` end all of them, and lets the harness count their CPU.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path


def start(
    command: list[str], log: Path, env: tuple[tuple[str, str], ...] = ()
) -> subprocess.Popen[bytes]:
    """Start ``command`` in a new session (its own group), output appended to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **dict(env)},
        )


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM the process's whole group, then SIGKILL after 10 s."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def last_line(log: Path, limit: int = 300) -> str:
    """The last line of a log that says something (a crashed process's reason)."""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:limit] if lines else "(empty log)"
