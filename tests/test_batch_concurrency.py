"""The AIMD window with scripted outcomes (llmsvc.batch.concurrency): no clock, no network."""

from __future__ import annotations

from llmsvc.batch.concurrency import Aimd


def test_additive_increase_one_per_window_of_successes() -> None:
    aimd = Aimd(4, 64)
    t = 0.0
    for _ in range(3):
        t += 1
        aimd.on_success(now=t, sent_at=t - 1)
    assert aimd.window == 4
    aimd.on_success(now=t + 1, sent_at=t)
    assert aimd.window == 5  # +1 after a window's worth (4) of fine answers
    for i in range(5):
        aimd.on_success(now=t + 2 + i, sent_at=t + 1 + i)
    assert aimd.window == 6


def test_never_above_the_limit() -> None:
    aimd = Aimd(2, 3)
    for i in range(100):
        aimd.on_success(now=float(i + 1), sent_at=float(i))
    assert aimd.window == 3
    assert Aimd(10, 3).window == 3


def test_a_burst_of_refusals_halves_once() -> None:
    aimd = Aimd(16, 64)
    # 16 lines sent at t=0..0.15, all refused around t=1
    results = [aimd.on_congestion(now=1.0 + i / 100, sent_at=i / 100) for i in range(16)]
    assert results[0] and not any(results[1:])
    assert aimd.window == 8
    # a refusal of a line sent after the decrease halves again
    assert aimd.on_congestion(now=3.0, sent_at=2.0)
    assert aimd.window == 4


def test_floor() -> None:
    aimd = Aimd(2, 8, floor=1)
    for i in range(5):
        aimd.on_congestion(now=float(2 * i + 1), sent_at=float(2 * i + 0.5))
    assert aimd.window == 1


def test_delay_rising_above_the_best_halves() -> None:
    aimd = Aimd(8, 64)
    t = 0.0
    for _ in range(6):  # 1 s per line, 100 tokens: 10 ms per token
        aimd.on_success(now=t + 1.0, sent_at=t, output_tokens=100)
        t += 1.0
    assert aimd.window == 8
    # 1.2x the best: still fine
    aimd.on_success(now=t + 1.2, sent_at=t, output_tokens=100)
    assert aimd.window == 8
    t += 2
    # 2x the best per token: the engine is saturating
    aimd.on_success(now=t + 2.0, sent_at=t, output_tokens=100)
    assert aimd.window == 4


def test_delay_is_per_output_token() -> None:
    aimd = Aimd(8, 64)
    t = 0.0
    for _ in range(6):
        aimd.on_success(now=t + 1.0, sent_at=t, output_tokens=100)
        t += 1.0
    # twice as long for twice the tokens is the same speed: no decrease
    aimd.on_success(now=t + 2.0, sent_at=t, output_tokens=200)
    assert aimd.window == 8


def test_short_answers_do_not_feed_the_delay_signal() -> None:
    aimd = Aimd(8, 64)
    t = 0.0
    for _ in range(6):
        aimd.on_success(now=t + 1.0, sent_at=t, output_tokens=100)
        t += 1.0
    # 2 tokens in 0.5 s is 25x slower per token, but it is prefill, not congestion
    aimd.on_success(now=t + 0.5, sent_at=t, output_tokens=2)
    assert aimd.window == 8
