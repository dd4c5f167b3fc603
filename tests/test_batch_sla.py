"""Throughput, ETA and SLA status (llmsvc.batch.sla): pure functions of injected times."""

from __future__ import annotations

import random

import orjson
import pytest

from llmsvc.batch.objects import batch_object
from llmsvc.batch.sla import (
    ETA_HORIZON_SECONDS,
    Throughput,
    assess,
    report_entry,
    report_overall,
)
from llmsvc.batch.store import BatchRecord, BatchStatus, Counts, Sample

T0 = 1_000_000.0


def batch(
    *,
    window: float = 3600.0,
    status: BatchStatus = "in_progress",
    raised: bool = False,
    times: dict[str, float] | None = None,
    total: int = 100,
) -> BatchRecord:
    return BatchRecord(
        id="batch_x",
        tenant="acme",
        endpoint="/v1/chat/completions",
        input_file_id="file-x",
        completion_window="1h",
        window_seconds=window,
        created_at=T0,
        status=status,
        times=times or {"in_progress_at": T0},
        counts=Counts(total=total),
        raised=raised,
    )


def test_no_rate_before_five_lines_or_ten_seconds() -> None:
    meter = Throughput(T0)
    for i in range(4):
        meter.observe(T0 + i + 1)
    assert meter.rate(T0 + 5) is None
    meter.observe(T0 + 5.5)
    assert meter.rate(T0 + 6) is not None
    slow = Throughput(T0)
    slow.observe(T0 + 3)
    assert slow.rate(T0 + 9) is None
    assert slow.rate(T0 + 11) is not None


def test_steady_load_gives_the_true_rate() -> None:
    meter = Throughput(T0)
    rate: float | None = None
    for s in range(1, 301):  # 2 lines/s for 5 minutes, rate read every second
        meter.observe(T0 + s, 2)
        rate = meter.rate(T0 + s)
    assert rate == pytest.approx(2.0, rel=0.02)


def test_follows_a_change_of_capacity() -> None:
    meter = Throughput(T0)
    for s in range(1, 121):
        meter.observe(T0 + s, 4)
        meter.rate(T0 + s)
    rate: float | None = None
    for s in range(121, 241):  # the fleet got busy: 1 line/s
        meter.observe(T0 + s, 1)
        rate = meter.rate(T0 + s)
    assert rate == pytest.approx(1.0, rel=0.1)


def test_restart_baseline_is_not_a_burst() -> None:
    meter = Throughput(T0 + 100, ended=50)
    assert meter.rate(T0 + 101) is None  # nothing seen by this meter yet
    meter.sync(T0 + 102, 50)
    assert meter.rate(T0 + 103) is None


def test_on_track_eta_from_throughput() -> None:
    view = assess(batch(), Counts(total=100, completed=40), 2.0, T0 + 60, 0.7)
    assert view.sla_status == "on_track"
    assert view.eta == pytest.approx(T0 + 60 + 30)
    assert view.eta_seconds == pytest.approx(30)
    assert view.progress == pytest.approx(0.4)
    assert view.time_left_seconds == pytest.approx(3600 - 60)
    assert view.window_used == pytest.approx(60 / 3600)
    assert view.priority == "batch"


def test_at_risk_when_the_eta_passes_the_deadline() -> None:
    view = assess(batch(), Counts(total=100, completed=10), 0.01, T0 + 600, 0.7)
    assert view.sla_status == "at_risk"
    assert view.eta is not None and view.eta > view.deadline


def test_at_risk_when_most_of_the_window_is_used() -> None:
    fast = 100.0  # the ETA is fine, but 75 % of the window is gone with work left
    view = assess(batch(), Counts(total=100, completed=90), fast, T0 + 2700, 0.7)
    assert view.sla_status == "at_risk"
    assert assess(batch(), Counts(total=100, completed=90), fast, T0 + 2000, 0.7).sla_status == (
        "on_track"
    )


def test_a_stalled_batch_keeps_a_finite_eta_past_the_deadline() -> None:
    """A throughput decaying toward 0 while nothing ends (engines stalled) gives an ETA at
    the horizon, not 1e30: at_risk, and the batch object still serialises (it answered 500
    with 'Integer exceeds 64-bit range' before)."""
    view = assess(batch(), Counts(total=100, completed=10), 1e-30, T0 + 60, 0.7)
    assert view.sla_status == "at_risk"
    assert view.eta == T0 + 60 + ETA_HORIZON_SECONDS
    assert view.eta_seconds == ETA_HORIZON_SECONDS
    body = orjson.loads(orjson.dumps(batch_object(batch(), view)))
    assert body["llmsvc"]["eta"] == int(T0 + 60 + ETA_HORIZON_SECONDS)


def test_no_throughput_yet_no_eta() -> None:
    view = assess(batch(), Counts(total=100), None, T0 + 1, 0.7)
    assert view.eta is None and view.eta_seconds is None
    assert view.sla_status == "on_track"


def test_violated_past_the_deadline_with_work_left() -> None:
    view = assess(batch(), Counts(total=100, completed=99), 5.0, T0 + 3601, 0.7)
    assert view.sla_status == "violated"
    assert view.time_left_seconds < 0


def test_expired_is_violated_and_late_completion_too() -> None:
    expired = batch(status="expired", times={"expired_at": T0 + 3602})
    assert assess(
        expired, Counts(total=10, completed=5, failed=5), None, T0 + 4000, 0.7
    ).sla_status == ("violated")
    late = batch(status="completed", times={"completed_at": T0 + 3700})
    assert assess(late, Counts(total=10, completed=10), None, T0 + 4000, 0.7).sla_status == (
        "violated"
    )
    on_time = batch(status="completed", times={"completed_at": T0 + 100})
    view = assess(on_time, Counts(total=10, completed=10), None, T0 + 4000, 0.7)
    assert view.sla_status == "on_track"
    assert view.window_used == pytest.approx(100 / 3600)


def test_raised_is_priority_standard() -> None:
    assert assess(batch(raised=True), Counts(total=1), None, T0, 0.7).priority == "standard"


def test_report_eta_error_and_overall() -> None:
    done = batch(status="completed", times={"completed_at": T0 + 100}, total=100)
    samples = [
        Sample(at=T0 + 10, completed=10, failed=0, throughput=1.0, eta=T0 + 100),
        Sample(at=T0 + 30, completed=30, failed=0, throughput=1.0, eta=T0 + 110),
        Sample(at=T0 + 50, completed=50, failed=0, throughput=1.0, eta=T0 + 90),
        Sample(at=T0 + 80, completed=80, failed=0, throughput=1.0, eta=T0 + 100),
    ]
    entry = report_entry(done, samples)
    assert entry["met"] is True
    assert entry["eta_error"]["at_25"] == pytest.approx(0.1)
    assert entry["eta_error"]["at_50"] == pytest.approx(0.1)
    assert entry["eta_error"]["at_75"] == pytest.approx(0.0)
    expired = batch(status="expired", times={"expired_at": T0 + 3601})
    running = batch()
    overall = report_overall([entry, report_entry(expired, []), report_entry(running, samples)])
    assert overall == {
        "batches": 3,
        "ended": 2,
        "met": 1,
        "violated": 1,
        "on_time_ratio": 0.5,
        "mean_eta_error_at_50": pytest.approx(0.1),
    }
    assert report_entry(running, samples)["eta_error"] == {
        "at_25": None,
        "at_50": None,
        "at_75": None,
    }


def test_eta_early_way_is_close_on_steady_jittered_load() -> None:
    rng = random.Random(15)
    total = 1000
    ends: list[float] = []
    t = T0
    for _ in range(total):  # about 2 lines/s, each gap jittered by up to +-90 %
        t += 0.5 * (1 + rng.uniform(-0.9, 0.9))
        ends.append(t)
    finish = ends[-1]
    meter = Throughput(T0)
    record = batch(window=86400, total=total)
    done = 0
    eta_early: float | None = None
    now = T0
    while done < total * 2 // 5:  # 40 % (at half way, left == done)
        now += 1.0  # one tick
        while done < total and ends[done] <= now:
            meter.observe(ends[done])
            done += 1
        view = assess(record, Counts(total=total, completed=done), meter.rate(now), now, 0.7)
        eta_early = view.eta
    assert eta_early is not None
    assert abs(eta_early - finish) / (finish - T0) < 0.05
