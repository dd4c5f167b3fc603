"""The batch runner: every active batch's lines through the router, on spare capacity.

One loop owns everything: it keeps up to the AIMD window (:mod:`llmsvc.batch.concurrency`)
of lines in flight over all ``in_progress`` batches, claiming from the batch with the
earliest deadline that has claimable lines (EDF: the order that meets the most deadlines
when they can be met at all); every ``tick`` it recomputes each batch's SLA view, raises
an at-risk batch to priority ``standard`` when its owner allowed it
(``metadata.llmsvc_allow_standard = "true"``), expires batches past their deadline, and
updates the metrics. Lines go at priority ``batch``, so the router serves them only when
no interactive request waits; its 429/503 refusals and ``X-Llmsvc-Contention`` shrink
the window.

State lives in the store (each call durable); what is in memory (throughputs, the window,
the lines in flight) is rebuilt or relearnt after a restart: ``store.recover()`` puts the
lines that were running back to pending, and a batch found ``finalizing`` is finalized
again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from llmsvc.batch.concurrency import Aimd
from llmsvc.batch.dispatch import Answer, error_line, is_refusal, response_line, send, usage_of
from llmsvc.batch.metrics import BatchMetrics
from llmsvc.batch.settings import BatchSettings
from llmsvc.batch.sla import SlaView, Throughput, assess, report_entry, report_overall
from llmsvc.batch.store import (
    ACTIVE_STATUSES,
    BatchRecord,
    BatchStatus,
    Counts,
    LineRecord,
    Sample,
    Store,
)

log = logging.getLogger(__name__)

ALLOW_STANDARD_KEY = "llmsvc_allow_standard"
MAX_BACKOFF = 60.0
END_GRACE = 30.0  # seconds a running line of an expired/cancelled batch may still take
CLAIM_CHUNK = 16  # lines claimed from a batch per store call


class Runner:
    """Runs every active batch's lines through the router (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        settings: BatchSettings,
        metrics: BatchMetrics,
        *,
        clock: Callable[[], float] = time.time,
        session_factory: Callable[[], aiohttp.ClientSession] | None = None,
    ) -> None:
        self._store = store
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._session_factory = session_factory
        self._aimd = Aimd(settings.initial_concurrency, settings.max_concurrency)
        self._event = asyncio.Event()
        self._active: dict[str, BatchRecord] = {}
        self._refresh = True
        self._inflight: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._abort: dict[tuple[str, int], str] = {}
        self._ending: dict[str, tuple[float, str]] = {}  # batch -> (since, code)
        self._cancels: set[str] = set()
        self._touched: set[str] = set()
        self._throughput: dict[str, Throughput] = {}
        self._rates: dict[str, float | None] = {}
        self._last_sample: dict[str, float] = {}
        self._ended_counts: dict[str, int] = {}
        self._next_retry: float | None = None
        self._session: aiohttp.ClientSession | None = None
        metrics.concurrency_limit.set(settings.max_concurrency)
        metrics.concurrency.set(self._aimd.window)

    # -- the public API -------------------------------------------------------------------

    async def run(self) -> None:
        """Background task: recover, then run lines until cancelled."""
        self._session = self._new_session()
        try:
            recovered = self._store.recover()
            if recovered:
                log.info("recovered %d lines that were running", recovered)
                self._metrics.lines_total.labels(outcome="retried").inc(recovered)
            self._count_ended()
            for batch in self._store.active_batches():
                if batch.status == "finalizing":
                    self._finalize(batch)
                elif batch.status == "cancelling":
                    self._cancels.add(batch.id)
            await self._loop()
        finally:
            for task in self._inflight.values():
                task.cancel()
            await asyncio.gather(*self._inflight.values(), return_exceptions=True)
            self._inflight.clear()
            await self._session.close()  # made by us (or our factory): ours to close

    def wake(self) -> None:
        """A batch was created: look for work now."""
        self._refresh = True
        self._event.set()

    def cancel(self, batch_id: str) -> None:
        """The API set the batch ``cancelling``: end its pending lines and finalize it."""
        self._cancels.add(batch_id)
        self.wake()

    def sla(self, batch: BatchRecord) -> SlaView:
        """The batch's SLA view now (throughput as of the last tick)."""
        return assess(
            batch,
            batch.counts,
            self._rates.get(batch.id),
            self._clock(),
            self._settings.at_risk_window_used,
        )

    def report(self) -> dict[str, Any]:
        """GET /sla/report's body: the newest 100 batches' samples and ETA errors."""
        batches = self._store.list_batches(tenant=None, all_tenants=True, after=None, limit=100)
        entries = [report_entry(b, self._store.samples(b.id)) for b in batches]
        return {"batches": entries, "overall": report_overall(entries)}

    @property
    def concurrency(self) -> int:
        """The current window."""
        return self._aimd.window

    # -- the loop -------------------------------------------------------------------------

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        while True:
            try:
                if self._cancels:
                    self._start_cancels()
                if loop.time() >= next_tick:
                    next_tick = loop.time() + self._settings.tick
                    self._tick()
                elif self._refresh:
                    self._load_active()
                self._check_touched()
                self._fill()
            except Exception:
                # a store error (disk full, a locked database): the lines wait, the loop
                # goes on at the next tick rather than the runner dying silently
                log.exception("batch runner: step failed; retrying at the next tick")
                self._next_retry = None
            timeout = next_tick - loop.time()
            if self._next_retry is not None:
                timeout = min(timeout, self._next_retry - self._clock())
            self._event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), max(0.005, timeout))

    def _load_active(self) -> None:
        self._refresh = False
        self._active = {b.id: b for b in self._store.active_batches()}

    def _fill(self) -> None:
        """Claim lines, earliest deadline first, up to the window."""
        self._next_retry = None
        room = self._aimd.window - len(self._inflight)
        if room <= 0:
            return  # a line that ends wakes the loop
        now = self._clock()
        runnable = [
            b
            for b in self._active.values()
            if b.status == "in_progress"
            and b.id not in self._ending
            and b.id not in self._cancels
            and now <= b.deadline
        ]
        for batch in sorted(runnable, key=lambda b: (b.deadline, b.created_at)):
            while room > 0:
                lines = self._store.claim(batch.id, min(room, CLAIM_CHUNK), now=now)
                for line in lines:
                    self._start(batch, line)
                room -= len(lines)
                if len(lines) < CLAIM_CHUNK:
                    break
            if room <= 0:
                break
        if room > 0 and runnable:
            # lines waiting on a backoff: look again at the earliest tick or retry
            self._next_retry = now + min(1.0, self._settings.retry_backoff)

    def _start(self, batch: BatchRecord, line: LineRecord) -> None:
        key = (batch.id, line.index)
        self._inflight[key] = asyncio.create_task(
            self._run_line(batch, line), name=f"batch-line-{batch.id}-{line.index}"
        )

    # -- one line -------------------------------------------------------------------------

    async def _run_line(self, batch: BatchRecord, line: LineRecord) -> None:
        key = (batch.id, line.index)
        started = asyncio.get_running_loop().time()
        try:
            assert self._session is not None  # run() made it before the first line
            answer = await send(self._session, self._settings, batch, line)
            duration = asyncio.get_running_loop().time() - started
            self._metrics.line_duration_seconds.observe(duration)
            self._settle(batch, line, answer, started)
        except asyncio.CancelledError:
            code = self._abort.pop(key, None)
            if code is not None:
                output = error_line(line, code, _END_MESSAGES[code])
                if self._store.fail(batch.id, line.index, output, now=self._clock(), error=code):
                    self._metrics.lines_total.labels(outcome="failed").inc()
            raise
        except Exception:
            log.exception("line %s of %s: unexpected error", line.index, batch.id)
            self._store.retry(
                batch.id,
                line.index,
                not_before=self._clock() + self._backoff(line.failures + 1),
                error="internal error",
                counts_as_failure=True,
            )
        finally:
            self._inflight.pop(key, None)
            self._touched.add(batch.id)
            self._event.set()

    def _settle(self, batch: BatchRecord, line: LineRecord, answer: Answer, sent: float) -> None:
        """Store the attempt's outcome; feed the window and the throughput."""
        now = self._clock()
        mono = asyncio.get_running_loop().time()
        status = answer.status
        if status is not None and 200 <= status < 300:
            self._metrics.line_attempts_total.labels(result="ok").inc()
            usage = usage_of(answer.body)
            if answer.contention > 0:
                self._aimd.on_congestion(now=mono, sent_at=sent)
            else:
                self._aimd.on_success(
                    now=mono, sent_at=sent, output_tokens=usage.get("output_tokens")
                )
            self._metrics.concurrency.set(self._aimd.window)
            if self._store.complete(
                batch.id, line.index, response_line(line, answer), now=now, usage=usage
            ):
                self._metrics.lines_total.labels(outcome="completed").inc()
                self._observe(batch, now)
            return
        if status is not None and is_refusal(status, answer.body):
            self._metrics.line_attempts_total.labels(result="refused").inc()
            self._aimd.on_congestion(now=mono, sent_at=sent)
            self._metrics.concurrency.set(self._aimd.window)
            wait = answer.retry_after if answer.retry_after is not None else self._backoff(1)
            self._retry(batch, line, now + wait, f"refused: {status}", counts=False)
            return
        self._metrics.line_attempts_total.labels(result="error").inc()
        if status is not None and 400 <= status < 500:
            self._fail(batch, line, response_line(line, answer), f"HTTP {status}", now)
            return
        failures = line.failures + 1
        error = f"HTTP {status}" if status is not None else (answer.error_code or "error")
        if failures >= self._settings.max_attempts:
            output = (
                response_line(line, answer)
                if status is not None
                else error_line(line, answer.error_code or "request_failed", answer.message)
            )
            self._fail(batch, line, output, error, now)
            return
        self._retry(batch, line, now + self._backoff(failures), error, counts=True)

    def _retry(
        self, batch: BatchRecord, line: LineRecord, not_before: float, error: str, *, counts: bool
    ) -> None:
        self._store.retry(
            batch.id, line.index, not_before=not_before, error=error, counts_as_failure=counts
        )
        self._metrics.lines_total.labels(outcome="retried").inc()
        if self._next_retry is None or not_before < self._next_retry:
            self._next_retry = not_before

    def _fail(
        self, batch: BatchRecord, line: LineRecord, output: dict[str, Any], error: str, now: float
    ) -> None:
        if self._store.fail(batch.id, line.index, output, now=now, error=error):
            self._metrics.lines_total.labels(outcome="failed").inc()
            self._observe(batch, now)

    def _observe(self, batch: BatchRecord, now: float) -> None:
        self._throughput_of(batch, None, now).observe(now)

    def _backoff(self, failures: int) -> float:
        return float(min(MAX_BACKOFF, self._settings.retry_backoff * 2 ** max(0, failures - 1)))

    def _throughput_of(self, batch: BatchRecord, done: int | None, now: float) -> Throughput:
        meter = self._throughput.get(batch.id)
        if meter is None:
            started = batch.times.get("in_progress_at", batch.created_at)
            baseline = done if done is not None else batch.counts.done
            # lines that ended before this process started are not a burst now
            meter = Throughput(started if baseline == 0 else now, ended=baseline)
            self._throughput[batch.id] = meter
        return meter

    def _new_session(self) -> aiohttp.ClientSession:
        if self._session_factory is not None:
            return self._session_factory()
        connector = aiohttp.TCPConnector(limit=self._settings.max_concurrency)
        return aiohttp.ClientSession(connector=connector)

    # -- every tick: SLA, priority, expiry, metrics, samples ----------------------------

    def _tick(self) -> None:
        self._load_active()
        now = self._clock()
        keys: set[tuple[str, str]] = set()
        for batch in list(self._active.values()):
            counts = batch.counts
            meter = self._throughput_of(batch, counts.done, now)
            meter.sync(now, counts.done)
            rate = meter.rate(now)
            self._rates[batch.id] = rate
            view = assess(batch, counts, rate, now, self._settings.at_risk_window_used)
            if batch.status == "in_progress":
                self._adjust_priority(batch, view)
                if now > batch.deadline and batch.id not in self._ending:
                    self._end(batch.id, "batch_expired")
            self._metrics.set_batch(batch, view)
            keys.add((batch.id, batch.tenant or ""))
            self._sample(batch, view, now)
            self._touched.add(batch.id)
        self._metrics.keep_only(keys)
        self._abort_overdue()
        self._update_totals()

    def _adjust_priority(self, batch: BatchRecord, view: SlaView) -> None:
        allowed = (batch.metadata or {}).get(ALLOW_STANDARD_KEY) == "true"
        want = allowed and (batch.raised or view.sla_status == "at_risk")
        if batch.raised and view.sla_status == "on_track":
            want = False
        if want != batch.raised:
            self._store.set_raised(batch.id, want)
            batch.raised = want
            log.info("batch %s: priority %s", batch.id, "standard" if want else "batch")

    def _sample(self, batch: BatchRecord, view: SlaView, now: float) -> None:
        last = self._last_sample.get(batch.id)
        if last is not None and now - last < self._settings.sample_interval:
            return
        self._last_sample[batch.id] = now
        self._store.add_sample(
            batch.id,
            Sample(
                at=now,
                completed=batch.counts.completed,
                failed=batch.counts.failed,
                throughput=view.throughput,
                eta=view.eta,
            ),
        )

    def _update_totals(self) -> None:
        by_status = dict(self._ended_counts)
        lines = Counts()
        for batch in self._active.values():
            by_status[batch.status] = by_status.get(batch.status, 0) + 1
            lines.pending += batch.counts.pending
            lines.running += batch.counts.running
            lines.completed += batch.counts.completed
            lines.failed += batch.counts.failed
        self._metrics.set_totals(by_status, lines)

    def _count_ended(self) -> None:
        """Ended batches by status, once at start (the runner counts the ones it ends)."""
        after: str | None = None
        while True:
            page = self._store.list_batches(tenant=None, all_tenants=True, after=after, limit=100)
            for batch in page:
                if batch.status not in ACTIVE_STATUSES:
                    self._ended_counts[batch.status] = self._ended_counts.get(batch.status, 0) + 1
            if len(page) < 100:
                return
            after = page[-1].id

    # -- ending: expiry, cancel, finalize -------------------------------------------------

    def _start_cancels(self) -> None:
        for batch_id in sorted(self._cancels):
            self._end(batch_id, "batch_cancelled")
        self._cancels.clear()
        self._refresh = True

    def _end(self, batch_id: str, code: str) -> None:
        """Stop sending the batch's lines: its pending ones end with ``code``."""
        if batch_id in self._ending:
            return
        ended = self._store.end_pending(
            batch_id, now=self._clock(), code=code, message=_END_MESSAGES[code]
        )
        self._metrics.lines_total.labels(outcome="failed").inc(ended)
        self._ending[batch_id] = (asyncio.get_running_loop().time(), code)
        self._touched.add(batch_id)
        log.info("batch %s: %s, %d pending lines ended", batch_id, code, ended)

    def _abort_overdue(self) -> None:
        """Running lines of an ended batch past the grace are cancelled (they fail)."""
        now = asyncio.get_running_loop().time()
        for batch_id, (since, code) in self._ending.items():
            if now - since < END_GRACE:
                continue
            for key, task in list(self._inflight.items()):
                if key[0] == batch_id and key not in self._abort:
                    self._abort[key] = code
                    task.cancel()

    def _check_touched(self) -> None:
        """Finalize the batches whose every line ended."""
        touched, self._touched = self._touched, set()
        for batch_id in touched:
            if any(key[0] == batch_id for key in self._inflight):
                continue
            batch = self._active.get(batch_id) or self._store.get_batch(batch_id)
            if batch is None or batch.status not in ("in_progress", "cancelling"):
                continue
            counts = self._store.counts(batch_id)
            if counts.pending or counts.running:
                continue
            fresh = self._store.get_batch(batch_id)
            if fresh is not None and fresh.status in ("in_progress", "cancelling"):
                self._finalize(fresh)

    def _finalize(self, batch: BatchRecord) -> None:
        """Write the output and error files, then the final status."""
        now = self._clock()
        ending = self._ending.pop(batch.id, None)
        cancelled = batch.status == "cancelling" or (
            ending is not None and ending[1] == "batch_cancelled"
        )
        if batch.status != "finalizing" and not cancelled:
            self._store.set_status(batch.id, "finalizing", at=now)
        completed = list(self._store.outputs(batch.id, "completed"))
        failed = list(self._store.outputs(batch.id, "failed"))
        fields: dict[str, Any] = {}
        if completed:
            fields["output_file_id"] = self._write(batch, "output", completed)
        if failed:
            fields["error_file_id"] = self._write(batch, "error", failed)
        expired = (ending is not None and ending[1] == "batch_expired") or any(
            (line.get("error") or {}).get("code") == "batch_expired" for line in failed
        )
        final: BatchStatus = "cancelled" if cancelled else "expired" if expired else "completed"
        self._store.set_status(batch.id, final, at=self._clock(), **fields)
        self._metrics.batches_ended_total.labels(status=final).inc()
        self._ended_counts[final] = self._ended_counts.get(final, 0) + 1
        self._active.pop(batch.id, None)
        self._throughput.pop(batch.id, None)
        self._rates.pop(batch.id, None)
        self._last_sample.pop(batch.id, None)
        self._refresh = True
        log.info(
            "batch %s: %s (%d completed, %d failed)", batch.id, final, len(completed), len(failed)
        )

    def _write(self, batch: BatchRecord, kind: str, lines: list[dict[str, Any]]) -> str:
        content = b"".join(
            json.dumps(line, separators=(",", ":")).encode() + b"\n" for line in lines
        )
        record = self._store.create_file(
            tenant=batch.tenant,
            purpose="batch_output",
            filename=f"{batch.id}_{kind}.jsonl",
            content=content,
        )
        return record.id


_END_MESSAGES = {
    "batch_expired": "The batch expired before this request could be executed.",
    "batch_cancelled": "The batch was cancelled before this request was executed.",
}
