"""What the harnesses read from ``/proc``: CPU, memory and descriptors of a process tree,
and a description of the machine.

The CPU a proxy spends is read from the kernel's own accounting: ``utime +
stime`` of ``/proc/<pid>/stat`` for the proxy's process and every descendant
(workers), before and after a run. Wall time says nothing on a shared 2-core
machine; these ticks do.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    return text[text.rindex(")") + 2 :].split()


def descendants(root: int) -> list[int]:
    """``root`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def children(parent: int) -> set[int]:
    """Live child processes of ``parent`` (zombies excluded): a router's workers."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields and int(fields[1]) == parent and fields[0] != "Z":
                found.add(int(entry.name))
    return found


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """utime + stime of each pid that still exists, in seconds."""
    result = {}
    for pid in pids:
        fields = _stat(pid)
        if fields:  # fields[11], [12]: utime, stime (the 14th and 15th of the whole line)
            result[pid] = (int(fields[11]) + int(fields[12])) / TICKS_PER_S
    return result


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` (``VmRSS`` of ``/proc/<pid>/status``), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def fd_count(pid: int) -> int:
    """Open file descriptors of ``pid``."""
    return len(os.listdir(f"/proc/{pid}/fd"))


class CpuMeter:
    """CPU spent by a process tree between :meth:`start` and :meth:`stop`."""

    def __init__(self, root: int | None) -> None:
        self._root = root
        self._before: dict[int, float] = {}

    def start(self) -> None:
        self._before = cpu_seconds(descendants(self._root)) if self._root else {}

    def stop(self) -> float:
        if not self._root:
            return 0.0
        after = cpu_seconds(descendants(self._root))
        return sum(t - self._before.get(pid, 0.0) for pid, t in after.items())


def machine() -> dict[str, object]:
    """nproc, CPU model, memory, kernel, platform, Python: printed with every result."""
    model = ""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next(
            (ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if "Model name" in ln), ""
        )
    except (OSError, subprocess.SubprocessError):
        pass
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
