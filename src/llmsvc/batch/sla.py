"""Throughput, ETA and SLA status of a batch: pure functions of injected times.

Why a blend: the rate over a sliding window follows a change of capacity within that
window (a fleet that got busier), and an EWMA of the per-window rates keeps one slow
burst from swinging the ETA. The window is max(30 s, a quarter of the elapsed run),
so a long batch's ETA is steady while a short one reacts fast. No ETA is given before
``MIN_LINES`` lines ended or ``MIN_SECONDS`` of running: a rate from two lines is noise.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from llmsvc.batch.store import BatchRecord, Counts, Sample

SlaStatus = Literal["on_track", "at_risk", "violated"]
Priority = Literal["batch", "standard"]

MIN_LINES = 5
MIN_SECONDS = 10.0
MIN_WINDOW = 30.0
EWMA_ALPHA = 0.3


@dataclass(frozen=True, slots=True)
class SlaView:
    """Where a batch stands against its deadline (the batch object's ``llmsvc`` part)."""

    deadline: float
    progress: float  # 0..1, done / total
    throughput: float | None  # lines/s, smoothed
    eta: float | None  # unix seconds of the predicted finish
    eta_seconds: float | None
    time_left_seconds: float  # negative past the deadline
    window_used: float  # 0..1+
    sla_status: SlaStatus
    priority: Priority


class Throughput:
    """Smoothed lines/s of one batch from its completion events.

    ``rate(now)`` is ``0.5 * window_rate + 0.5 * ewma``, where ``window_rate`` is the
    lines ended in the last ``max(30 s, elapsed / 4)`` over that span (or the elapsed time
    when shorter), and ``ewma`` is an exponentially weighted mean of ``window_rate`` taken
    at every ``rate`` call (alpha 0.3 per call, i.e. per tick).
    """

    def __init__(self, started: float, *, ended: int = 0) -> None:
        self._started = started
        self._events: deque[tuple[float, int]] = deque()
        self._ended = ended
        self._seen = 0  # lines observed by this meter (``ended`` counts earlier ones too)
        self._ewma: float | None = None

    @property
    def ended(self) -> int:
        """Lines counted so far."""
        return self._ended

    def observe(self, now: float, lines: int = 1) -> None:
        """``lines`` lines ended at ``now``."""
        if lines <= 0:
            return
        self._events.append((now, lines))
        self._ended += lines
        self._seen += lines

    def sync(self, now: float, done: int) -> None:
        """Count lines the store says ended that were not observed (another path, a restart)."""
        if done > self._ended:
            self.observe(now, done - self._ended)

    def _window_rate(self, now: float) -> float:
        elapsed = max(now - self._started, 1e-9)
        span = max(MIN_WINDOW, elapsed / 4)
        cutoff = now - span
        while self._events and self._events[0][0] < cutoff:
            self._events.popleft()
        lines = sum(n for _, n in self._events)
        return lines / min(span, elapsed)

    def rate(self, now: float) -> float | None:
        """Lines/s, or None while too little has been seen."""
        window = self._window_rate(now)
        self._ewma = (
            window if self._ewma is None else (EWMA_ALPHA * window + (1 - EWMA_ALPHA) * self._ewma)
        )
        if self._seen < MIN_LINES and now - self._started < MIN_SECONDS:
            return None
        if self._seen == 0:
            return None
        return 0.5 * window + 0.5 * self._ewma


ETA_HORIZON_SECONDS = 400 * 86400.0
"""The farthest an ETA goes: past the longest window (365 d), so a stalled batch (its
throughput decaying toward 0 while nothing ends) stays at_risk with a finite ETA — one that
fits the batch object's integers and the ETA gauge the alert compares — instead of 1e30."""


def assess(
    batch: BatchRecord,
    counts: Counts,
    throughput: float | None,
    now: float,
    at_risk_window_used: float,
) -> SlaView:
    """The batch's SLA view at ``now``.

    violated: past the deadline with work left, or ended after it (an expired batch);
    at_risk: the ETA passes the deadline, or ``window_used >= at_risk_window_used`` with
    work left; otherwise on_track.
    """
    deadline = batch.deadline
    total = counts.total
    left = total - counts.done
    progress = 1.0 if total == 0 else counts.done / total
    window_used = (now - batch.created_at) / batch.window_seconds if batch.window_seconds else 1.0
    ended = batch.status not in ("validating", "in_progress", "finalizing", "cancelling")
    ended_at = _ended_at(batch)
    eta: float | None
    if left <= 0:
        eta = ended_at if ended_at is not None else now
    elif throughput is not None and throughput > 0:
        eta = now + min(left / throughput, ETA_HORIZON_SECONDS)
    else:
        eta = None
    if ended and ended_at is not None:
        window_used = (ended_at - batch.created_at) / batch.window_seconds
    status = _status(batch, left, now, eta, window_used, ended, ended_at, at_risk_window_used)
    eta_seconds = None if eta is None else max(0.0, eta - now)
    return SlaView(
        deadline=deadline,
        progress=progress,
        throughput=None if throughput is None or math.isnan(throughput) else throughput,
        eta=eta,
        eta_seconds=eta_seconds,
        time_left_seconds=deadline - now,
        window_used=window_used,
        sla_status=status,
        priority="standard" if batch.raised else "batch",
    )


def _status(
    batch: BatchRecord,
    left: int,
    now: float,
    eta: float | None,
    window_used: float,
    ended: bool,
    ended_at: float | None,
    at_risk_window_used: float,
) -> SlaStatus:
    deadline = batch.deadline
    missed = batch.status == "expired"
    missed |= left > 0 and now > deadline and batch.status != "cancelled"
    missed |= left <= 0 and ended_at is not None and ended_at > deadline
    if missed:
        return "violated"
    if left > 0 and not ended:
        if eta is not None and eta > deadline:
            return "at_risk"
        if window_used >= at_risk_window_used:
            return "at_risk"
    return "on_track"


REPORT_POINTS = (("at_25", 0.25), ("at_50", 0.5), ("at_75", 0.75))


def finished_at(batch: BatchRecord) -> float | None:
    """When an ended batch ended (None while it runs)."""
    for name in ("completed_at", "expired_at", "cancelled_at", "failed_at"):
        if name in batch.times:
            return batch.times[name]
    return None


def report_entry(batch: BatchRecord, samples: list[Sample]) -> dict[str, Any]:
    """One batch of GET /sla/report: its samples, whether it met its deadline, and the
    ETA's error at 25/50/75 % progress: ``|eta - finish| / (finish - created)``."""
    finished = finished_at(batch)
    met = batch.status == "completed" and finished is not None and finished <= batch.deadline
    total = batch.counts.total
    errors: dict[str, float | None] = {}
    for name, point in REPORT_POINTS:
        errors[name] = None
        if finished is None or total == 0 or finished <= batch.created_at:
            continue
        for sample in samples:
            if sample.eta is not None and (sample.completed + sample.failed) / total >= point:
                errors[name] = abs(sample.eta - finished) / (finished - batch.created_at)
                break
    return {
        "id": batch.id,
        "tenant": batch.tenant,
        "status": batch.status,
        "deadline": batch.deadline,
        "created_at": batch.created_at,
        "finished_at": finished,
        "met": met,
        "samples": [
            {
                "at": s.at,
                "completed": s.completed,
                "failed": s.failed,
                "throughput": s.throughput,
                "eta": s.eta,
            }
            for s in samples
        ],
        "eta_error": errors,
    }


def report_overall(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The report's summary: how many ended batches met their deadline."""
    ended = [e for e in entries if e["finished_at"] is not None]
    met = sum(1 for e in ended if e["met"])
    violated = sum(
        1
        for e in ended
        if e["status"] == "expired" or (e["status"] == "completed" and not e["met"])
    )
    at_50 = [e["eta_error"]["at_50"] for e in ended if e["eta_error"]["at_50"] is not None]
    return {
        "batches": len(entries),
        "ended": len(ended),
        "met": met,
        "violated": violated,
        "on_time_ratio": met / (met + violated) if met + violated else None,
        "mean_eta_error_at_50": sum(at_50) / len(at_50) if at_50 else None,
    }


def _ended_at(batch: BatchRecord) -> float | None:
    """When the batch's last line ended: its end, or the start of its finalizing."""
    end = finished_at(batch)
    return end if end is not None else batch.times.get("finalizing_at")
