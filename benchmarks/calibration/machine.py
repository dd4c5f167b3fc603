"""How busy the machine was while the calibration measured: ours against everyone else's.

A fit or a comparison on a shared machine measures the neighbours as well as
the engine (docs/simulated-engine.md, "Calibration against llama.cpp"), so each
phase records the load average at its start and end, and the CPU the whole
machine spent (``/proc/stat``) split into the engine under test (its process
tree's ``utime + stime``), this process (the client) and the rest: other
tenants. ``others_cores`` near 0 is a quiet run.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common.procfs import TICKS_PER_S, CpuMeter


def machine_busy_seconds() -> float:
    """CPU seconds every core has spent outside idle and iowait since boot (``/proc/stat``)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / TICKS_PER_S


def own_cpu_seconds() -> float:
    """CPU of this process (the load generator, and an in-process fit)."""
    times = os.times()
    return times.user + times.system


@dataclass(slots=True)
class Phase:
    """CPU and load of one phase (a fit, or one engine's share of a comparison)."""

    engine_pid: int | None = None
    _meter: CpuMeter = field(init=False)
    _start: tuple[float, float, float, tuple[float, float, float]] = field(init=False)

    def __post_init__(self) -> None:
        self._meter = CpuMeter(self.engine_pid)

    def start(self) -> None:
        self._meter.start()
        self._start = (time.monotonic(), machine_busy_seconds(), own_cpu_seconds(),
                       os.getloadavg())  # fmt: skip

    def stop(self) -> dict[str, Any]:
        wall = time.monotonic() - self._start[0]
        engine = self._meter.stop()
        machine = machine_busy_seconds() - self._start[1]
        client = own_cpu_seconds() - self._start[2]
        return {
            "wall_s": round(wall, 1),
            "loadavg_1m_start": round(self._start[3][0], 2),
            "loadavg_1m_end": round(os.getloadavg()[0], 2),
            "machine_cores": round(machine / wall, 2),
            "engine_cores": round(engine / wall, 2),
            "client_cores": round(client / wall, 2),
            "others_cores": round(max(0.0, machine - engine - client) / wall, 2),
        }
