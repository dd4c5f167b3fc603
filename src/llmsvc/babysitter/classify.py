"""Why did the engine end? From its return code, its stderr and the kernel's OOM counters.

:func:`classify` turns the facts of one engine's end into a :class:`Reason`
and a one-line detail. :class:`OomWatch` snapshots the OOM-kill counters when
the engine starts (its memory cgroup's, cgroup v1 or v2, and the kernel's
``/proc/vmstat``) so that an engine ended by SIGKILL can be told ``OOMKilled``.
Reading these files is a handful of small reads from ``/proc`` and ``/sys``:
bounded, so done on the loop.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llmsvc.babysitter.lifecycle import Reason, signal_name

BAD_ARGUMENTS_WITHIN = 10.0  # seconds: a usage message after longer is a crash, not bad flags

GPU_OOM = re.compile(
    r"CUDA out of memory|torch\.(?:cuda\.)?OutOfMemoryError|cudaErrorMemoryAllocation"
    r"|CUDA_ERROR_OUT_OF_MEMORY|CUBLAS_STATUS_ALLOC_FAILED|cudaMalloc failed: out of memory"
    r"|out of memory on device|HIP out of memory|failed to allocate .* (?:CUDA|GPU|device)",
    re.IGNORECASE,
)
CUDA_ERROR = re.compile(
    r"CUDA error|CUDA driver error|cudaError\w*|CUBLAS_STATUS_\w+|CUDNN_STATUS_\w+|NCCL error"
    r"|no CUDA-capable device|CUDA initialization|HIP error|illegal memory access",
    re.IGNORECASE,
)
USAGE = re.compile(
    r"^\s*usage:|unrecognized arguments|invalid choice|error: argument|the following arguments"
    r" are required|unknown (?:option|argument|flag)|invalid (?:option|argument)",
    re.IGNORECASE | re.MULTILINE,
)

CGROUP_ROOT = Path("/sys/fs/cgroup")
VMSTAT = Path("/proc/vmstat")


@dataclass(frozen=True)
class Ending:
    """The facts of one engine's end."""

    returncode: int | None  # as asyncio reports it: negative for a signal
    uptime: float  # seconds the process lived
    stderr: Sequence[str]  # its last lines
    oom_kills: int  # OOM kills counted while it lived (cgroup or kernel)


def classify(ending: Ending) -> tuple[Reason, str]:
    """The reason an engine that ended on its own ended, and a one-line detail."""
    rc = ending.returncode
    if rc is not None and rc == -signal.SIGKILL and ending.oom_kills > 0:
        return Reason.OOM_KILLED, "killed by SIGKILL after an out-of-memory kill"
    if (line := last_match(GPU_OOM, ending.stderr)) is not None:
        return Reason.GPU_OUT_OF_MEMORY, line
    if (line := last_match(CUDA_ERROR, ending.stderr)) is not None:
        return Reason.CUDA_ERROR, line
    if rc is not None and rc > 0 and ending.uptime <= BAD_ARGUMENTS_WITHIN:
        line = last_match(USAGE, ending.stderr)
        if line is not None:
            return Reason.BAD_ARGUMENTS, line
    if rc is not None and rc < 0:
        return Reason.SIGNALED, f"killed by {signal_name(-rc)}"
    return Reason.EXITED, f"exited with code {rc}"


def last_match(pattern: re.Pattern[str], lines: Sequence[str]) -> str | None:
    """The last line matching ``pattern``, trimmed to 300 characters."""
    for line in reversed(lines):
        if pattern.search(line):
            return line.strip()[:300]
    return None


# ---- OOM-kill counters ---------------------------------------------------------------------


class OomWatch:
    """OOM kills counted since it was made: the engine's memory cgroup and the kernel's."""

    def __init__(self, pid: int, *, files: list[Path] | None = None) -> None:
        """``files``: the counters to read, in order (default: ``pid``'s cgroup's, then
        the kernel's)."""
        self._files = _counter_files(pid) if files is None else files
        self._start = [_read_counter(f) for f in self._files]

    def kills(self) -> int:
        """OOM kills since the snapshot, by the first counter readable at both moments: the
        engine's cgroup's when there is one (the kernel-wide count would blame the engine
        for any process killed anywhere on the host), else the kernel's."""
        for path, before in zip(self._files, self._start, strict=True):
            now = _read_counter(path)
            if before is not None and now is not None:
                return max(0, now - before)
        return 0


def _counter_files(pid: int) -> list[Path]:
    files = [f for f in (_cgroup_counter(pid),) if f is not None]
    return [*files, VMSTAT]


def _cgroup_counter(pid: int) -> Path | None:
    """The file that counts OOM kills in ``pid``'s memory cgroup (v1 or v2), if readable."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if "memory" in controllers.split(","):  # v1
            candidates = [CGROUP_ROOT / "memory" / rel / "memory.oom_control"]
        elif controllers == "":  # v2 (unified)
            candidates = [
                CGROUP_ROOT / rel / "memory.events",
                CGROUP_ROOT / "unified" / rel / "memory.events",
            ]
        else:
            continue
        for candidate in candidates:
            if candidate.exists():
                return candidate
    return None


def _read_counter(path: Path) -> int | None:
    """The ``oom_kill N`` line of an oom_control, memory.events or vmstat file."""
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            return int(value)
    return None
