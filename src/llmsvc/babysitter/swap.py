"""Model swap (``POST /model``): the request, what an engine is launched with, the swap's record.

The supervisor performs the swap (drain, stop, wait for the GPU memory,
launch, register); this module holds its vocabulary and the wait for the old
engine's memory to be given back (:func:`await_release`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from llmsvc.babysitter import gpus as gpu_query
from llmsvc.babysitter import process
from llmsvc.babysitter.engines import EngineSpec
from llmsvc.babysitter.gpus import GpuProbe, GpuReport

log = logging.getLogger("llmsvc.babysitter.swap")

RELEASE_POLL = 0.5
STEADY = 0.01  # free memory that moves less than 1% of the device between polls is steady
BASELINE_SHARE = 0.95  # released when free memory is back to 95% of what it was before launch

SwapState = Literal["in-progress", "done", "failed", "rolled-back"]


class SwapRequest(BaseModel):
    """Body of ``POST /model``."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="The new model path or id (the engine's --model).")
    model_name: str | None = Field(
        default=None,
        min_length=1,
        description="Served model name (default: the last part of the new model).",
    )
    engine_args: list[str] | None = Field(
        default=None, description="Engine arguments replacing those after '--' (default: kept)."
    )
    rollback: bool = Field(
        default=True,
        description="When the new model fails to become ready, start the previous one again.",
    )


@dataclass(frozen=True)
class Served:
    """What an engine is launched with: the model and the command line built for it."""

    model: str | None
    model_name: str | None
    engine_args: tuple[str, ...]
    spec: EngineSpec


@dataclass
class SwapRecord:
    """The latest swap, as ``/status`` shows it."""

    from_model: str | None
    to_model: str
    rollback: bool
    state: SwapState = "in-progress"
    reason: str | None = None
    detail: str = ""
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    def finish(self, state: SwapState, reason: str | None = None, detail: str = "") -> None:
        self.state, self.reason, self.detail = state, reason, detail
        self.finished_at = time.time()

    def as_json(self) -> dict[str, object]:
        return {
            "from_model": self.from_model,
            "to_model": self.to_model,
            "rollback": self.rollback,
            "state": self.state,
            "reason": self.reason,
            "detail": self.detail,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


async def await_release(
    pgid: int,
    *,
    probe: GpuProbe,
    gpus: Sequence[str],
    need_bytes: float,
    baseline: GpuReport | None,
    group_timeout: float,
    gpu_timeout: float,
) -> str:
    """Wait until the old engine is gone and its GPU memory is free again; says what was seen."""
    if not await process.group_gone(pgid, timeout=group_timeout):
        log.warning("processes of the old engine's group %d are still there", pgid)
    report = await gpu_query.query(probe)
    if not report.gpus:
        return f"process group gone; {report.note or 'no GPU visible'}"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + gpu_timeout
    before = {g.index: g.free_bytes for g in baseline.select(gpus)} if baseline else {}
    previous: dict[str, int] | None = None
    while True:
        chosen = report.select(gpus)
        free = {g.index: g.free_bytes for g in chosen}
        steady = previous is not None and all(
            abs(free[g.index] - previous.get(g.index, -1)) <= STEADY * g.total_bytes for g in chosen
        )
        enough = all(
            g.free_bytes >= max(need_bytes, BASELINE_SHARE * before.get(g.index, 0)) for g in chosen
        )
        if steady and enough:
            return "GPU memory released: " + _describe(chosen)
        if loop.time() >= deadline:
            log.warning("GPU memory not released after %.0fs: %s", gpu_timeout, _describe(chosen))
            return "GPU memory not released in time: " + _describe(chosen)
        previous = free
        await asyncio.sleep(RELEASE_POLL)
        report = await gpu_query.query(probe)


def _describe(chosen: Sequence[gpu_query.Gpu]) -> str:
    gib = 1024**3
    return ", ".join(f"GPU {g.index} {g.free_bytes / gib:.1f} GiB free" for g in chosen)
