"""The TTL applies itself: every read of the store sees statuses as of now, at the
cost of one comparison until a heartbeat can be stale."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from llmsvc.core.records import ServiceRecord, ServiceRegistration
from llmsvc.registry.store import ServiceStore


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class CountingStore(ServiceStore):
    """Counts the passes over all records."""

    passes = 0

    def _apply_ttl(self, now: float) -> list[str]:
        self.passes += 1
        return super()._apply_ttl(now)


def reg(name: str) -> ServiceRegistration:
    return ServiceRegistration.model_validate({"name": name, "host": "h", "port": 80})


def status(store: ServiceStore, name: str) -> str:
    record = store.get(name)
    assert record is not None
    return record.status


def test_every_read_applies_the_ttl_without_expire() -> None:
    reads: dict[str, Callable[[ServiceStore], object]] = {
        "get": lambda s: status(s, "a"),
        "records": lambda s: [r.status for r in s.records()],
        "snapshot": lambda s: s.snapshot()[1][0].status,
        "stats": lambda s: s.stats().unhealthy,
    }
    expected: dict[str, object] = {
        "get": "unhealthy",
        "records": ["unhealthy"],
        "snapshot": "unhealthy",
        "stats": 1,
    }
    for how, read in reads.items():
        clock = FakeClock()
        store = ServiceStore(ttl=10, clock=clock)
        store.register(reg("a"))
        index = store.index
        clock.now += 10
        assert read(store) != expected[how], f"{how}: exactly at the TTL it is still fresh"
        assert store.index == index
        clock.now += 1
        assert read(store) == expected[how], how
        assert store.index == index + 1, f"{how}: the flip is a change"
        read(store)
        assert store.index == index + 1, f"{how}: and only one"


def test_snapshot_index_includes_the_expiry_it_applied() -> None:
    clock = FakeClock()
    store = ServiceStore(ttl=10, clock=clock)
    store.register(reg("a"))
    before = store.index
    clock.now += 11
    index, records = store.snapshot()
    assert index == before + 1 == store.index
    assert [r.status for r in records] == ["unhealthy"]


def test_a_pass_runs_only_when_a_heartbeat_can_be_stale() -> None:
    clock = FakeClock()
    store = CountingStore(ttl=10, clock=clock)
    for name in ("a", "b", "c"):
        store.register(reg(name))
        clock.now += 1
    for _ in range(100):
        store.records()
        store.get("a")
        store.stats()
    assert store.passes == 0, "nothing could be stale: no pass over the records"
    b_before = store.get("b")
    clock.now = 1011  # a (at 1000) is stale now; b and c (1001, 1002) are not
    store.records()
    assert store.passes == 1
    assert status(store, "a") == "unhealthy"
    assert store.get("b") is b_before, "a record whose status stays is not stored anew"
    store.stats()
    assert store.passes == 1, "the next possible flip is b's, after 1011"
    clock.now = 1011.5
    assert [r.status for r in store.records()] == ["unhealthy", "unhealthy", "healthy"]
    assert store.passes == 2


def test_a_heartbeat_keeps_a_record_fresh_and_moves_the_next_pass_on() -> None:
    clock = FakeClock()
    store = CountingStore(ttl=10, clock=clock)
    store.register(reg("a"))
    for _ in range(10):
        clock.now += 6
        store.heartbeat("a")
        for _ in range(10):
            assert status(store, "a") == "healthy"
    # A pass finds the newest heartbeat; the next one is due when that one could be stale.
    assert store.passes <= 5, "a pass per TTL, not per read"
    clock.now += 11
    assert status(store, "a") == "unhealthy"


def test_a_ttl_of_zero_never_passes() -> None:
    clock = FakeClock()
    store = CountingStore(ttl=0, clock=clock)
    store.register(reg("a"))
    clock.now += 1e6
    assert status(store, "a") == "healthy"
    assert store.passes == 0


def test_restore_derives_every_saved_status_again() -> None:
    clock = FakeClock()
    saved = ServiceRecord.model_validate(
        {"name": "a", "host": "h", "port": 80, "status": "unhealthy", "last_heartbeat": 0.0}
    )
    store = ServiceStore(ttl=10, clock=clock)
    store.restore([saved])
    assert status(store, "a") == "healthy", "its TTL counts from now, and no check failed"


async def test_a_blocking_query_sees_an_expiry_at_once() -> None:
    clock = FakeClock()
    store = ServiceStore(ttl=10, clock=clock)
    store.register(reg("a"))
    index = store.index
    clock.now += 11
    # The record went stale after the watcher's index: it is a change, answered now.
    await asyncio.wait_for(store.wait_for_change(index, 30.0), 1.0)
    assert store.index == index + 1


async def test_the_sweep_wakes_watchers_when_a_record_goes_stale() -> None:
    clock = FakeClock()
    store = ServiceStore(ttl=10, clock=clock)
    store.register(reg("a"))
    index = store.index
    waiter = asyncio.create_task(store.wait_for_change(index, 30.0))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    clock.now += 11
    store.sweep()  # what the cleanup loop runs every cleanup_interval
    await asyncio.wait_for(waiter, 1.0)
    assert status(store, "a") == "unhealthy"
