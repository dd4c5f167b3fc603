"""The batch service's Prometheus metrics (docs/batch.md "Monitoring").

Per-batch series carry ``batch_id`` and ``tenant``: bounded because only active
batches have them (they are removed when the batch ends), which is what the alerts
``BatchSLAAtRisk`` and ``BatchSLAWindowMostlyUsed`` join on.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from llmsvc.batch.sla import SlaView
from llmsvc.batch.store import BatchRecord, BatchStatus, Counts
from llmsvc.core.metrics import LATENCY_BUCKETS

BATCH_STATUSES: tuple[BatchStatus, ...] = (
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
)
LINE_STATES = ("pending", "running", "completed", "failed")
SLA_STATUSES = ("on_track", "at_risk", "violated")


class BatchMetrics:
    """Every batch metric, on the registry given."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.lines_total = Counter(
            "llmsvc_batch_lines_total",
            "Line outcomes: completed, failed (into the error file), retried (to be tried again).",
            ["outcome"],
            registry=registry,
        )
        self.line_attempts_total = Counter(
            "llmsvc_batch_line_attempts_total",
            "Sends of a line to the router by result: ok, refused (429/503 capacity), error.",
            ["result"],
            registry=registry,
        )
        self.line_duration_seconds = Histogram(
            "llmsvc_batch_line_duration_seconds",
            "Seconds of one attempt of a line at the router.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.active_lines = Gauge(
            "llmsvc_batch_active_lines",
            "Lines of active batches by state.",
            ["state"],
            registry=registry,
        )
        self.backlog_lines = Gauge(
            "llmsvc_batch_backlog_lines",
            "Pending and running lines of active batches.",
            registry=registry,
        )
        self.batches = Gauge(
            "llmsvc_batch_batches", "Batches by status.", ["status"], registry=registry
        )
        per_batch = ["batch_id", "tenant"]
        self.progress_ratio = Gauge(
            "llmsvc_batch_progress_ratio",
            "Ended lines over total, per active batch.",
            per_batch,
            registry=registry,
        )
        self.throughput = Gauge(
            "llmsvc_batch_throughput_lines_per_second",
            "Smoothed lines ended per second, per active batch.",
            per_batch,
            registry=registry,
        )
        self.eta_seconds = Gauge(
            "llmsvc_batch_eta_seconds",
            "Seconds until the predicted finish, per active batch (absent while unknown).",
            per_batch,
            registry=registry,
        )
        self.time_left_seconds = Gauge(
            "llmsvc_batch_time_left_seconds",
            "Seconds until the deadline (negative past it), per active batch.",
            per_batch,
            registry=registry,
        )
        self.window_used_ratio = Gauge(
            "llmsvc_batch_window_used_ratio",
            "Share of the completion window used, per active batch.",
            per_batch,
            registry=registry,
        )
        self.deadline_timestamp = Gauge(
            "llmsvc_batch_deadline_timestamp_seconds",
            "The deadline (unix seconds), per active batch.",
            per_batch,
            registry=registry,
        )
        self.sla_status = Gauge(
            "llmsvc_batch_sla_status",
            "1 for the batch's current SLA status, 0 for the others.",
            [*per_batch, "sla_status"],
            registry=registry,
        )
        self.concurrency = Gauge(
            "llmsvc_batch_concurrency",
            "Lines allowed in flight now (the AIMD window).",
            registry=registry,
        )
        self.concurrency_limit = Gauge(
            "llmsvc_batch_concurrency_limit",
            "The most lines in flight (--max-concurrency).",
            registry=registry,
        )
        self.batches_ended_total = Counter(
            "llmsvc_batch_batches_ended_total",
            "Batches ended by status: completed, expired, cancelled, failed.",
            ["status"],
            registry=registry,
        )
        for outcome in ("completed", "failed", "retried"):
            self.lines_total.labels(outcome=outcome)
        for result in ("ok", "refused", "error"):
            self.line_attempts_total.labels(result=result)
        for status in ("completed", "expired", "cancelled", "failed"):
            self.batches_ended_total.labels(status=status)
        for status in BATCH_STATUSES:
            self.batches.labels(status=status).set(0)
        self._shown: set[tuple[str, str]] = set()

    def set_totals(self, by_status: dict[str, int], lines: Counts) -> None:
        """Batches by status (every status, zeros included) and active lines by state."""
        for status in BATCH_STATUSES:
            self.batches.labels(status=status).set(by_status.get(status, 0))
        for state in LINE_STATES:
            self.active_lines.labels(state=state).set(getattr(lines, state))
        self.backlog_lines.set(lines.pending + lines.running)

    def set_batch(self, batch: BatchRecord, view: SlaView) -> None:
        """The per-batch series of an active batch."""
        key = (batch.id, batch.tenant or "")
        self._shown.add(key)
        self.progress_ratio.labels(*key).set(view.progress)
        self.throughput.labels(*key).set(view.throughput or 0.0)
        if view.eta_seconds is None:
            _remove(self.eta_seconds, key)
        else:
            self.eta_seconds.labels(*key).set(view.eta_seconds)
        self.time_left_seconds.labels(*key).set(view.time_left_seconds)
        self.window_used_ratio.labels(*key).set(view.window_used)
        self.deadline_timestamp.labels(*key).set(view.deadline)
        for status in SLA_STATUSES:
            self.sla_status.labels(*key, status).set(1 if status == view.sla_status else 0)

    def keep_only(self, active: set[tuple[str, str]]) -> None:
        """Remove the per-batch series of batches no longer active."""
        for key in self._shown - active:
            for gauge in (
                self.progress_ratio,
                self.throughput,
                self.eta_seconds,
                self.time_left_seconds,
                self.window_used_ratio,
                self.deadline_timestamp,
            ):
                _remove(gauge, key)
            for status in SLA_STATUSES:
                _remove(self.sla_status, (*key, status))
        self._shown &= active


def _remove(gauge: Gauge, labels: tuple[str, ...]) -> None:
    with contextlib.suppress(KeyError):
        gauge.remove(*labels)
