"""Before each launch: is there enough free host memory and free GPU memory?

Host memory is ``MemAvailable`` of ``/proc/meminfo``, lowered to what the
babysitter's memory cgroup still allows where it sets a limit (v1
``memory.limit_in_bytes`` − ``memory.usage_in_bytes``, v2 ``memory.max`` −
``memory.current``). GPU memory is asked per device (:mod:`gpus`) when
``--min-free-gpu-mem`` is set, or, by default, when the engine's command line
says how much of each GPU it will take (:func:`gpu_fraction`: vLLM takes
``--gpu-memory-utilization`` of the whole GPU, 0.9 unless given, and fails at
start when less is free; SGLang ``--mem-fraction-static`` when given). A check
that cannot be made is skipped with a note, never failed: the defaults must not
refuse an engine on a guess.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llmsvc.babysitter import gpus as gpu_query
from llmsvc.babysitter.gpus import GpuProbe, GpuReport
from llmsvc.babysitter.resources import memory_limit

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


VLLM_DEFAULT_UTILIZATION = 0.9
_FRACTION_FLAGS = {"vllm": "--gpu-memory-utilization", "sglang": "--mem-fraction-static"}


def gpu_fraction(engine: str, argv: Sequence[str]) -> tuple[float, str] | None:
    """The share of each GPU's memory the engine will take, and where that was read.

    None when its command line does not say (llama.cpp, InfiniLM, commands, an
    SGLang without ``--mem-fraction-static``, whose default depends on the GPU).
    """
    flag = _FRACTION_FLAGS.get(engine)
    if flag is None:
        return None
    for i, arg in enumerate(argv):
        text = arg.removeprefix(flag + "=") if arg.startswith(flag + "=") else None
        if arg == flag and i + 1 < len(argv):
            text = argv[i + 1]
        if text is not None:
            try:
                value = float(text)
            except ValueError:
                return None  # the engine will refuse it itself (BadArguments)
            return (value, f"{engine} {flag} {text}") if 0 < value <= 1 else None
    if engine == "vllm":
        return VLLM_DEFAULT_UTILIZATION, "vllm's default --gpu-memory-utilization 0.9"
    return None


async def run(
    *,
    min_free_mem: float | None,
    min_free_gpu_mem: float | None,
    gpus: Sequence[str],
    probe: GpuProbe,
    fraction: tuple[float, str] | None = None,
    enabled: bool = True,
) -> Preflight:
    """Check host memory (always measured) and GPU memory (a minimum set, or else the
    engine's ``fraction`` of each GPU when known); nothing when not ``enabled``."""
    result = Preflight()
    if not enabled:
        result.notes.append("preflight is off (--no-preflight)")
        return result
    free = free_host_memory()
    if free is None:
        result.notes.append("host memory unknown (no /proc/meminfo); check skipped")
    else:
        need = default_host_need() if min_free_mem is None else min_free_mem
        if need > 0:
            result.checks.append(Check("host memory", free / GIB, need))
    explicit = min_free_gpu_mem is not None
    if (explicit and min_free_gpu_mem) or (not explicit and fraction is not None):
        report = await gpu_query.query(probe)
        result.gpus = report
        chosen = report.select(gpus)
        if report.note:
            result.notes.append(report.note)
        elif not chosen:
            result.notes.append(f"GPUs {','.join(gpus)} not found by {report.source}; skipped")
        elif not explicit and fraction is not None:
            result.notes.append(f"GPU memory needed: {fraction[1]} of each GPU")
        for gpu in chosen:
            if explicit and min_free_gpu_mem:
                need = min_free_gpu_mem
            else:
                need = round((fraction[0] if fraction else 0.0) * gpu.total_bytes / GIB, 2)
            result.checks.append(Check(f"GPU {gpu.index}", gpu.free_bytes / GIB, need))
    return result


DEFAULT_HOST_NEED_GIB = 1.0


def default_host_need(pid: int | None = None) -> float:
    """GiB of free host memory needed when ``--min-free-mem`` is not given: 1, but a
    quarter of the cgroup's memory limit under one below 4 GiB (a small pod or unit,
    which could never have 1 GiB free)."""
    limit = memory_limit(os.getpid() if pid is None else pid)
    if limit is None:
        return DEFAULT_HOST_NEED_GIB
    return round(min(DEFAULT_HOST_NEED_GIB, limit / 4 / GIB), 3)


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
