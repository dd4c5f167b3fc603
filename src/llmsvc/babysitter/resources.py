"""What the engine holds, sampled for ``/metrics``: its GPUs and its host memory.

The seeds watched GPU memory (alert above 90 %) and engines' host memory
(near the unit's ``MemoryMax`` the OOM killer comes); both need numbers per
engine, which only the babysitter next to it can read:

- **GPUs**: the ones it was given (``--gpus``, else every GPU seen), through
  :mod:`gpus` (NVML, else ``nvidia-smi``) in a child process, as preflight
  asks them. A GPU that is not seen has no series; a reading a device does not
  report (``[N/A]``) has none either: absent, never guessed.
- **Host memory**: the resident set of every process in the engine's process
  group (it is started in a session of its own, so its workers are in it),
  from ``/proc/<pid>/statm``, and the memory limit of the engine's cgroup
  (v1 ``memory.limit_in_bytes``, v2 ``memory.max``) where one is set.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from llmsvc.babysitter import gpus as gpu_query
from llmsvc.babysitter.gpus import GpuProbe, GpuReport

PROC = Path("/proc")
CGROUP_ROOT = Path("/sys/fs/cgroup")
NO_LIMIT = 1 << 60  # cgroup v1 writes ~2**63 for "no limit" (as preflight reads it)
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class Sample:
    """One look: the babysitter's GPUs (``None`` when not asked) and its engine's memory."""

    gpus: GpuReport | None
    rss_bytes: int | None  # None: no engine process runs
    limit_bytes: int | None  # None: no cgroup limit, or no engine


def group_rss(pgid: int, proc: Path = PROC) -> int:
    """Bytes resident in memory of every process whose process group is ``pgid``."""
    total = 0
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            statm = (entry / "statm").read_text()
        except OSError:  # gone while we looked
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "(comm)": state, ppid, pgrp, ...
        if len(fields) > 2 and fields[2] == str(pgid):
            total += int(statm.split()[1]) * PAGE
    return total


def memory_limit(pid: int) -> int | None:
    """The memory limit of ``pid``'s cgroup (v1 or v2), or None where none is set."""
    try:
        lines = (PROC / str(pid) / "cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        candidates: tuple[Path, ...]
        if "memory" in controllers.split(","):
            candidates = (CGROUP_ROOT / "memory" / rel / "memory.limit_in_bytes",)
        elif controllers == "":
            candidates = (
                CGROUP_ROOT / rel / "memory.max",
                CGROUP_ROOT / "unified" / rel / "memory.max",
            )
        else:
            continue
        for file in candidates:
            try:
                text = file.read_text().strip()
            except OSError:
                continue
            if text.isdigit() and int(text) < NO_LIMIT:
                return int(text)
    return None


class ResourceSampler:
    """Samples on every ``tick`` (``--resource-interval``) and hands the sample to ``publish``."""

    def __init__(
        self,
        *,
        probe: GpuProbe,
        gpus: Sequence[str],
        engine_pid: Callable[[], int | None],
        publish: Callable[[Sample], None],
    ) -> None:
        self._probe = probe
        self._gpus = list(gpus)
        self._engine_pid = engine_pid
        self._publish = publish

    async def sample(self) -> Sample:
        report = None
        if self._probe != "off":
            full = await gpu_query.query(self._probe)
            report = GpuReport(full.select(self._gpus), full.source, full.note)
        pid = self._engine_pid()
        rss = group_rss(pid) if pid is not None else None
        limit = memory_limit(pid) if pid is not None else None
        return Sample(report, rss, limit)

    async def tick(self) -> None:
        self._publish(await self.sample())
