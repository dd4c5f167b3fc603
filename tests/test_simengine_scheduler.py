"""The scheduler alone: slot and KV admission, FIFO order, cancellation."""

from __future__ import annotations

import asyncio

import pytest

from llmsvc.simengine.model import KvBudget
from llmsvc.simengine.scheduler import Scheduler, Ticket


def make(max_num_seqs: int = 2, kv_tokens: int = 1000) -> Scheduler:
    return Scheduler(max_num_seqs=max_num_seqs, kv=KvBudget(capacity_tokens=kv_tokens))


async def test_admits_up_to_max_num_seqs_then_queues() -> None:
    s = make(max_num_seqs=2)
    a, b, c = (Ticket("m", 10) for _ in range(3))
    await s.acquire(a)
    await s.acquire(b)
    waiter = asyncio.create_task(s.acquire(c))
    await asyncio.sleep(0)
    assert (s.running, s.waiting) == (2, 1)
    assert s.waiting_by_model["m"] == 1
    s.release(a)
    await asyncio.wait_for(waiter, 1)
    assert (s.running, s.waiting) == (2, 0)
    assert s.kv.used_tokens == 20


async def test_kv_budget_limits_admission() -> None:
    s = make(max_num_seqs=10, kv_tokens=100)
    await s.acquire(Ticket("m", 60))
    waiter = asyncio.create_task(s.acquire(Ticket("m", 60)))
    await asyncio.sleep(0)
    assert (s.running, s.waiting) == (1, 1)
    assert s.kv.usage == pytest.approx(0.6)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter


async def test_queue_is_fifo_and_the_head_blocks() -> None:
    s = make(max_num_seqs=10, kv_tokens=100)
    first = Ticket("m", 90)
    await s.acquire(first)
    order: list[str] = []

    async def run(name: str, tokens: int) -> None:
        await s.acquire(Ticket("m", tokens))
        order.append(name)

    big = asyncio.create_task(run("big", 50))
    await asyncio.sleep(0)
    small = asyncio.create_task(run("small", 5))  # would fit, but waits behind the head
    await asyncio.sleep(0)
    assert order == []
    assert s.waiting == 2
    s.release(first)
    await asyncio.wait_for(asyncio.gather(big, small), 1)
    assert order == ["big", "small"]


async def test_cancelled_waiter_leaves_the_queue_and_unblocks_others() -> None:
    s = make(max_num_seqs=10, kv_tokens=100)
    await s.acquire(Ticket("m", 60))
    head = asyncio.create_task(s.acquire(Ticket("m", 50)))
    await asyncio.sleep(0)
    behind = asyncio.create_task(s.acquire(Ticket("m", 30)))
    await asyncio.sleep(0)
    assert s.waiting == 2
    head.cancel()
    await asyncio.wait_for(behind, 1)
    assert (s.running, s.waiting) == (2, 0)
    assert s.waiting_by_model["m"] == 0


async def test_slot_context_releases_on_cancel() -> None:
    s = make(max_num_seqs=1)
    started = asyncio.Event()

    async def hold() -> None:
        async with s.slot(Ticket("m", 10)):
            started.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(hold())
    await started.wait()
    assert s.running == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (s.running, s.kv.used_tokens) == (0, 0)
    assert s.running_by_model["m"] == 0
