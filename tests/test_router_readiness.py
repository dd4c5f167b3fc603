"""A starting router's readiness: parts reported, bounded waits, the timeout."""

from __future__ import annotations

import asyncio
import time

from llmsvc.router.readiness import REGISTRY, STATIC, Readiness


async def test_ready_when_every_part_reported() -> None:
    readiness = Readiness([REGISTRY, STATIC], timeout=30)
    assert not readiness.ready
    assert readiness.waiting_for() == [REGISTRY, STATIC]
    waiter = asyncio.create_task(readiness.wait(30))
    readiness.done(STATIC)
    readiness.done(STATIC)  # again: nothing changes
    await asyncio.sleep(0)
    assert not waiter.done()
    assert readiness.waiting_for() == [REGISTRY]
    readiness.done(REGISTRY)
    assert await asyncio.wait_for(waiter, 1) is True
    assert readiness.ready


async def test_nothing_to_wait_for_is_ready_at_once() -> None:
    assert Readiness([], timeout=30).ready


async def test_a_wait_is_bounded_by_its_limit() -> None:
    readiness = Readiness([REGISTRY], timeout=30)
    started = time.monotonic()
    assert await readiness.wait(0.1) is False
    assert 0.05 < time.monotonic() - started < 1


async def test_ready_anyway_after_the_timeout() -> None:
    readiness = Readiness([REGISTRY], timeout=0.2)
    expiry = asyncio.create_task(readiness.expire())
    started = time.monotonic()
    assert await readiness.wait(5) is True  # the wait ends at the timeout, not its limit
    assert time.monotonic() - started < 1
    await expiry
    assert readiness.ready
    assert readiness.waiting_for() == [REGISTRY]  # what never reported
