"""The one load loop (``llmsvc.bench.schedule.drive``): counts, durations, drain and stop."""

from __future__ import annotations

import asyncio
import time

import pytest

from llmsvc.bench.schedule import Schedule, drive


async def test_a_request_count_hands_out_each_ticket_once() -> None:
    in_flight = peak = 0

    async def send(n: int) -> int:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.001)
        in_flight -= 1
        return n

    driven = await drive(Schedule(concurrency=4, requests=30), send)
    assert sorted(driven.results) == list(range(30))
    assert peak == 4
    assert not driven.interrupted


async def test_a_duration_lets_the_requests_in_flight_finish() -> None:
    async def send(n: int) -> float:
        await asyncio.sleep(0.05)
        return time.monotonic()

    started = time.monotonic()
    driven = await drive(Schedule(concurrency=2, duration=0.12), send)
    assert 4 <= len(driven.results) <= 6
    assert max(driven.results) - started >= 0.12  # the last ones started before the end
    assert not driven.interrupted


async def test_drain_finishes_what_is_in_flight_and_stop_cancels_it() -> None:
    drain, stop = asyncio.Event(), asyncio.Event()

    async def slow(n: int) -> int:
        if n == 3:
            drain.set()
        await asyncio.sleep(0.05)
        return n

    drained = await drive(Schedule(concurrency=2), slow, drain=drain)
    assert sorted(drained.results) == [0, 1, 2, 3] and not drained.interrupted

    async def stuck(n: int) -> int:
        if n == 1:
            stop.set()
            await asyncio.sleep(10)
        await asyncio.sleep(0.001)
        return n

    stopped = await drive(Schedule(concurrency=2), stuck, stop=stop)
    assert 1 not in stopped.results and stopped.interrupted


async def test_pause_spaces_a_clients_requests() -> None:
    seen: list[int] = []

    async def send(n: int) -> int:
        return n

    started = time.monotonic()
    driven = await drive(
        Schedule(concurrency=1, requests=3, pause=0.05), send, on_result=seen.append
    )
    assert time.monotonic() - started >= 0.15
    assert seen == driven.results == [0, 1, 2]


def test_requests_and_duration_together_are_refused() -> None:
    with pytest.raises(ValueError, match="not both"):
        Schedule(requests=1, duration=1.0)


async def test_arrivals_send_at_their_instants_whatever_the_answers_do() -> None:
    sent: list[float] = []
    stop = asyncio.Event()

    async def send(n: int) -> int:
        sent.append(time.monotonic())
        await asyncio.sleep(0.2 if n == 0 else 0.01)  # a slow first answer holds nobody up
        return n

    started = time.monotonic()
    driven = await drive(Schedule(arrivals=[0.0, 0.05, 0.1]), send)
    assert driven.results == [1, 2, 0]
    offsets = [t - started for t in sent]
    assert offsets[1] >= 0.05 and offsets[2] >= 0.1
    assert offsets[2] < 0.2  # sent before the first answer came

    async def stuck(n: int) -> int:
        stop.set()
        await asyncio.sleep(10)
        return n

    stopped = await drive(Schedule(arrivals=[0.0, 0.0]), stuck, stop=stop)
    assert stopped.results == [] and stopped.interrupted


async def test_a_drained_open_loop_sends_no_more_and_finishes_what_is_in_flight() -> None:
    """The fault harness's hung case: arrivals far past the run's end, drained when it is over."""
    drain = asyncio.Event()

    async def send(n: int) -> int:
        if n == 2:
            drain.set()
        await asyncio.sleep(0.05)  # still in flight when the drain comes
        return n

    # Arrivals 0.1 s apart: the next one is not yet due when request 2 sets the drain, even
    # on a loaded machine (0.01 s was tried: a late loop had sent 3 before 2 had run).
    started = time.monotonic()
    drained = await drive(Schedule(arrivals=[i * 0.1 for i in range(1000)]), send, drain=drain)
    assert sorted(drained.results) == [0, 1, 2] and not drained.interrupted
    assert time.monotonic() - started < 2.0  # the schedule runs 100 s
