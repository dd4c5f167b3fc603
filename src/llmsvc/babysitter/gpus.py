"""Memory, utilization and temperature per GPU: NVML (``nvidia-ml-py``) when installed, else
``nvidia-smi``, else none.

Both are asked in a child process under a timeout, never on the loop: NVML
calls are quick but blocking and can hang on a wedged driver, so the NVML
query runs as ``python -c`` with the babysitter's interpreter (where
``pynvml`` is importable) and ``nvidia-smi`` runs as itself, both through
``asyncio`` subprocesses killed after :data:`QUERY_TIMEOUT`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import orjson

log = logging.getLogger("llmsvc.babysitter.gpus")

GpuProbe = Literal["auto", "nvml", "nvidia-smi", "off"]
QUERY_TIMEOUT = 10.0
MIB = 1024 * 1024

_NVML_SCRIPT = """
import json, sys
try:
    import pynvml
except ImportError:
    sys.exit(3)
pynvml.nvmlInit()
out = []
for i in range(pynvml.nvmlDeviceGetCount()):
    h = pynvml.nvmlDeviceGetHandleByIndex(i)
    m = pynvml.nvmlDeviceGetMemoryInfo(h)
    try:
        util = pynvml.nvmlDeviceGetUtilizationRates(h).gpu
    except pynvml.NVMLError:
        util = None
    try:
        temp = pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU)
    except pynvml.NVMLError:
        temp = None
    out.append([str(i), m.free, m.total, util, temp])
print(json.dumps(out))
"""
_NO_NVML = 3

_SMI_ARGS = (
    "--query-gpu=index,memory.free,memory.total,utilization.gpu,temperature.gpu",
    "--format=csv,noheader,nounits",
)


@dataclass(frozen=True)
class Gpu:
    """One GPU as NVML or nvidia-smi saw it; utilization (percent) and temperature (°C)
    are None where the device does not report them (``[N/A]``), never guessed."""

    index: str
    free_bytes: int
    total_bytes: int
    utilization_percent: float | None = None
    temperature_celsius: float | None = None

    @property
    def used_bytes(self) -> int:
        return max(0, self.total_bytes - self.free_bytes)


@dataclass(frozen=True)
class GpuReport:
    """The GPUs seen (``gpus`` empty when none), how, and a note when nothing could be asked."""

    gpus: tuple[Gpu, ...]
    source: str  # "nvml", "nvidia-smi" or "none"
    note: str = ""

    def select(self, indices: Sequence[str]) -> tuple[Gpu, ...]:
        """The GPUs named by ``indices`` (``--gpus``); all when none are named."""
        if not indices:
            return self.gpus
        wanted = set(indices)
        return tuple(g for g in self.gpus if g.index in wanted)


async def query(probe: GpuProbe) -> GpuReport:
    """Free and total memory of every GPU this machine shows."""
    if probe == "off":
        return GpuReport((), "none", "GPU checks are off (--gpu-probe off)")
    if probe in ("auto", "nvml"):
        gpus = await _nvml()
        if gpus is not None:
            return GpuReport(gpus, "nvml")
        if probe == "nvml":
            return GpuReport((), "none", "NVML is not available (pip install nvidia-ml-py)")
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return GpuReport(
            (), "none", "no GPU visible (neither NVML nor nvidia-smi); GPU check skipped"
        )
    gpus = await _nvidia_smi(smi)
    if gpus is None:
        return GpuReport((), "none", "nvidia-smi failed; GPU check skipped")
    return GpuReport(gpus, "nvidia-smi")


async def _nvml() -> tuple[Gpu, ...] | None:
    if importlib.util.find_spec("pynvml") is None:  # not installed: no child to start
        return None
    out = await _run(sys.executable, "-c", _NVML_SCRIPT)
    if out is None:
        return None
    try:
        rows = orjson.loads(out)
        return tuple(
            Gpu(str(row[0]), int(row[1]), int(row[2]), *(_number(v) for v in row[3:5]))
            for row in rows
        )
    except (orjson.JSONDecodeError, TypeError, ValueError, IndexError):
        return None


async def _nvidia_smi(path: str) -> tuple[Gpu, ...] | None:
    out = await _run(path, *_SMI_ARGS)
    if out is None:
        return None
    return parse_smi(out.decode(errors="replace"))


def parse_smi(text: str) -> tuple[Gpu, ...] | None:
    """``index, free MiB, total MiB[, utilization %, temperature °C]`` lines as
    ``nvidia-smi --format=csv,noheader,nounits`` writes them; memory must be numbers, the
    rest may be ``[N/A]`` (None)."""
    gpus = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        try:
            index, free, total = parts[0], float(parts[1]), float(parts[2])
        except (IndexError, ValueError):
            return None
        extra = [_number(p) for p in parts[3:5]]
        gpus.append(Gpu(index, int(free * MIB), int(total * MIB), *extra))
    return tuple(gpus)


def _number(value: object) -> float | None:
    """A reading, or None for ``[N/A]``, ``null`` and the like."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


async def _run(*argv: str) -> bytes | None:
    """``argv``'s stdout when it exits 0 within :data:`QUERY_TIMEOUT`, else None."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError as exc:
        log.debug("cannot run %s: %s", argv[0], exc)
        return None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), QUERY_TIMEOUT)
    except TimeoutError:
        log.warning("%s did not answer within %.0fs", argv[0], QUERY_TIMEOUT)
        return None
    finally:
        if proc.returncode is None:  # timed out or cancelled: never leave it behind
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.shield(proc.wait())
    return out if proc.returncode == 0 else None
