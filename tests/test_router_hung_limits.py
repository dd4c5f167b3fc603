"""The default first-byte limit: the floor without history, 4 x the recent p99 with it,
never above --proxy-timeout; --first-byte-timeout, when given, for every backend."""

from __future__ import annotations

import pytest

from llmsvc.router.latency import MIN_SAMPLES, FirstByteLimits, LatencyWindow
from llmsvc.router.settings import RouterSettings

DERIVED = FirstByteLimits(fixed=None, stream_floor=30.0, plain_floor=180.0, cap=300.0)


def window(*samples: float) -> LatencyWindow:
    w = LatencyWindow()
    for s in samples:
        w.add(s)
    return w


def test_without_history_the_floor_of_the_kind() -> None:
    assert DERIVED.limit(LatencyWindow(), stream=True) == 30.0
    assert DERIVED.limit(LatencyWindow(), stream=False) == 180.0
    few = window(*[20.0] * (MIN_SAMPLES - 1))  # too few samples to say anything yet
    assert DERIVED.limit(few, stream=True) == 30.0


def test_history_raises_the_limit_to_four_times_the_p99() -> None:
    slow_prefill = window(*[1.0] * 90, *[12.0] * 10)  # p99: 12 s
    assert DERIVED.limit(slow_prefill, stream=True) == pytest.approx(48.0)
    fast = window(*[0.2] * 100)  # a fast backend keeps the floor
    assert DERIVED.limit(fast, stream=True) == 30.0
    long_answers = window(*[100.0] * 100)  # 4 x 100 s, capped at --proxy-timeout
    assert DERIVED.limit(long_answers, stream=False) == 300.0


def test_the_p99_follows_the_recent_window() -> None:
    w = window(*[20.0] * 100)
    assert DERIVED.limit(w, stream=True) == pytest.approx(80.0)
    for _ in range(300):  # the slow past leaves the window
        w.add(1.0)
    assert DERIVED.limit(w, stream=True) == 30.0
    w.clear()  # a restarted backend: no history
    assert w.p99() is None and w.ewma is None


def test_a_fixed_first_byte_timeout_wins() -> None:
    fixed = FirstByteLimits(fixed=2.5, stream_floor=30.0, plain_floor=180.0, cap=300.0)
    assert fixed.limit(window(*[100.0] * 100), stream=True) == 2.5


def test_the_defaults() -> None:
    fields = RouterSettings.model_fields
    assert fields["first_byte_timeout"].default is None
    assert fields["stream_first_byte_floor"].default == 30.0
    assert fields["plain_first_byte_floor"].default == 180.0
    assert fields["health_interval"].default == 5.0
    assert fields["health_timeout"].default == 1.0
    assert fields["suspect_after"].default == 0.5
