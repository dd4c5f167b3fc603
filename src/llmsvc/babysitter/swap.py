"""Model swap (``POST /model``): the request, what an engine is launched with, the swap's course.

A swap goes::

    begun (POST /model: the record /status shows; the engine drains)
      ──drained──▶ staged (the next life launches the new model)
      ──launched──▶ on trial ──ready──▶ done (kept)
                       └──failed──▶ rolled-back (the previous model is staged again)
                                    or failed (no rollback: the restart policy decides)

:class:`Swap` holds that course; the supervisor drives it (drain, stop, wait
for the GPU memory with :func:`await_release`, launch, register).
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
from llmsvc.babysitter.lifecycle import ExitRecord

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


class Swap:
    """The latest swap's course: its record, the model staged for the next life, the trial."""

    def __init__(self) -> None:
        self.record: SwapRecord | None = None
        self._staged: Served | None = None  # launched by the next life
        self._previous: Served | None = None  # what a failed swap rolls back to
        self._on_trial = False  # the current life runs the new model, not yet ready

    @property
    def in_progress(self) -> bool:
        return self.record is not None and self.record.state == "in-progress"

    def begin(self, current: Served, target: Served, *, rollback: bool) -> None:
        """``POST /model`` accepted: the record exists from now on."""
        self.record = SwapRecord(current.model, str(target.model), rollback)

    def stage(self, current: Served, target: Served) -> None:
        """The old engine is drained: the next life launches ``target`` instead of ``current``."""
        self._previous, self._staged = current, target

    def take_staged(self) -> Served | None:
        """What the next life launches, when a swap staged it (that life is then on trial)."""
        staged, self._staged = self._staged, None
        if staged is not None:
            self._on_trial = self.in_progress
        return staged

    def passed(self) -> None:
        """The engine became ready: a new model on trial is kept."""
        if self._on_trial and self.record is not None:
            self._on_trial = False
            self.record.finish("done")

    def failed(self, record: ExitRecord) -> bool:
        """The engine's life failed: True when it was a new model on trial and the previous
        one is staged again (rolled back); False leaves the failure to the restart policy."""
        if not self._on_trial or self.record is None:
            return False
        self._on_trial = False
        why = f"{record.reason}: {record.detail}".rstrip(": ")
        previous, self._previous = self._previous, None
        if not self.record.rollback or previous is None:
            self.record.finish("failed", str(record.reason), why)
            return False
        log.error("model %s failed (%s); rolling back to %s", self.record.to_model, why,
                  previous.model)  # fmt: skip
        self.record.finish("rolled-back", str(record.reason), why)
        self._staged = previous
        return True


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
