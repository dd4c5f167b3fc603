"""Before each launch: is there enough free host memory and free GPU memory?

Host memory is ``MemAvailable`` of ``/proc/meminfo``, lowered to what the
babysitter's memory cgroup still allows where it sets a limit (v1
``memory.limit_in_bytes`` − ``memory.usage_in_bytes``, v2 ``memory.max`` −
``memory.current``). GPU memory is asked per device (:mod:`gpus`), only when
``--min-free-gpu-mem`` is set. A check that cannot be made is skipped with a
note, never failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llmsvc.babysitter import gpus as gpu_query
from llmsvc.babysitter.gpus import GpuProbe, GpuReport

GIB = 1024**3
MEMINFO = Path("/proc/meminfo")
CGROUP_ROOT = Path("/sys/fs/cgroup")
NO_LIMIT = 1 << 60  # cgroup v1 writes ~2**63 for "no limit"


@dataclass(frozen=True)
class Check:
    """One resource checked: what, how much was free, how much was needed."""

    what: str
    free_gib: float
    need_gib: float

    @property
    def ok(self) -> bool:
        return self.free_gib >= self.need_gib


@dataclass
class Preflight:
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    gpus: GpuReport | None = None

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def message(self) -> str:
        """One line: what is short, or that all is well."""
        short = [c for c in self.checks if not c.ok]
        if not short:
            return "enough free memory"
        return "; ".join(
            f"{c.what}: {c.free_gib:.2f} GiB free, {c.need_gib:.2f} GiB needed" for c in short
        )

    def as_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "message": self.message(),
            "checks": [
                {"what": c.what, "free_gib": round(c.free_gib, 3), "need_gib": c.need_gib}
                for c in self.checks
            ],
            "notes": list(self.notes),
        }


async def run(
    *, min_free_mem: float, min_free_gpu_mem: float, gpus: Sequence[str], probe: GpuProbe
) -> Preflight:
    """Check host memory (always measured) and GPU memory (when a minimum is set)."""
    result = Preflight()
    free = free_host_memory()
    if free is None:
        result.notes.append("host memory unknown (no /proc/meminfo); check skipped")
    else:
        result.checks.append(Check("host memory", free / GIB, min_free_mem))
    if min_free_gpu_mem > 0:
        report = await gpu_query.query(probe)
        result.gpus = report
        chosen = report.select(gpus)
        if report.note:
            result.notes.append(report.note)
        elif not chosen:
            result.notes.append(f"GPUs {','.join(gpus)} not found by {report.source}; skipped")
        for gpu in chosen:
            result.checks.append(Check(f"GPU {gpu.index}", gpu.free_bytes / GIB, min_free_gpu_mem))
    return result


def free_host_memory() -> int | None:
    """Bytes available to a new process: MemAvailable, capped by the cgroup's headroom."""
    available = _meminfo_available()
    headroom = cgroup_headroom()
    if available is None:
        return headroom
    return available if headroom is None else min(available, headroom)


def _meminfo_available() -> int | None:
    try:
        text = MEMINFO.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def cgroup_headroom(pid: str = "self") -> int | None:
    """Limit − usage of the process's memory cgroup, or None without a limit."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if "memory" in controllers.split(","):
            base = _existing(CGROUP_ROOT / "memory" / rel, CGROUP_ROOT / "memory")
            pair = ("memory.limit_in_bytes", "memory.usage_in_bytes")
        elif controllers == "":
            base = _existing(CGROUP_ROOT / rel, CGROUP_ROOT / "unified" / rel)
            pair = ("memory.max", "memory.current")
        else:
            continue
        if base is None:
            continue
        limit, usage = _read_int(base / pair[0]), _read_int(base / pair[1])
        if limit is not None and usage is not None and limit < NO_LIMIT:
            return max(0, limit - usage)
    return None


def _existing(*candidates: Path) -> Path | None:
    return next((c for c in candidates if c.is_dir()), None)


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (v2, no limit) is None
