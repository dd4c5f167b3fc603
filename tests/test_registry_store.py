"""Store logic with a fake clock: status, TTL, removal, the change index."""

from __future__ import annotations

import asyncio
import time

import pytest

from llmsvc.core.records import ServiceRecord, ServiceRegistration
from llmsvc.registry.store import ServiceStore


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def present(record: ServiceRecord | None) -> ServiceRecord:
    """``record``, which must be there."""
    assert record is not None
    return record


def reg(name: str = "a", **extra: object) -> ServiceRegistration:
    return ServiceRegistration.model_validate({"name": name, "host": "h", "port": 80, **extra})


def test_registration_starts_healthy_and_counts_as_heartbeat() -> None:
    clock = FakeClock()
    store = ServiceStore(ttl=10, clock=clock)
    record, created = store.register(reg())
    assert created
    assert record.status == "healthy"
    assert record.registered_at == record.last_heartbeat == 1000.0
    assert store.index == 1
    _, created = store.register(reg())
    assert not created
    assert store.index == 2


def test_ttl_marks_unhealthy_then_removes() -> None:
    clock = FakeClock()
    store = ServiceStore(ttl=10, clock=clock)
    store.register(reg("a"))
    store.register(reg("b"))
    clock.now += 10
    assert store.expire() == []  # exactly at the TTL: still fresh
    clock.now += 1
    store.heartbeat("b")
    index = store.index
    assert store.expire() == ["a"]
    assert present(store.get("a")).status == "unhealthy"
    assert store.index == index + 1
    assert store.sweep() == []  # 11 s < 2×TTL
    # A heartbeat makes a stale record healthy again (its checks were fine).
    store.heartbeat("a")
    assert present(store.get("a")).status == "healthy"
    clock.now += 21
    store.heartbeat("b")
    removed = store.sweep()
    assert [r.name for r in removed] == ["a"]
    assert store.get("a") is None
    assert [r.name for r in store.records()] == ["b"]


def test_ttl_zero_disables_expiry() -> None:
    clock = FakeClock()
    store = ServiceStore(ttl=0, clock=clock)
    store.register(reg())
    clock.now += 1e6
    assert store.expire() == []
    assert store.sweep() == []
    assert present(store.get("a")).status == "healthy"


def test_checks_and_ttl_combine() -> None:
    clock = FakeClock()
    store = ServiceStore(ttl=10, clock=clock)
    record, _ = store.register(reg())
    index = store.index
    failed = store.record_check("a", False, url=record.url)
    assert failed is not None
    assert failed.status == "unhealthy"
    assert failed.consecutive_failures == 1
    assert failed.last_check == 1000.0
    assert store.index == index + 1
    # A second failure changes only the counter: no new index.
    store.record_check("a", False, url=record.url)
    assert present(store.get("a")).consecutive_failures == 2
    assert store.index == index + 1
    ok = store.record_check("a", True, url=record.url)
    assert ok is not None
    assert ok.status == "healthy"
    assert ok.consecutive_failures == 0
    # A good check does not cure a missing heartbeat.
    clock.now += 11
    store.record_check("a", True, url=record.url)
    assert present(store.get("a")).status == "unhealthy"


def test_check_result_for_a_moved_or_gone_record_is_dropped() -> None:
    store = ServiceStore(ttl=10, clock=FakeClock())
    store.register(reg())
    assert store.record_check("a", False, url="http://elsewhere:1") is None
    assert present(store.get("a")).consecutive_failures == 0
    assert store.record_check("ghost", False, url=None) is None


def test_index_moves_only_for_watched_changes() -> None:
    clock = FakeClock()
    store = ServiceStore(ttl=10, clock=clock)
    store.register(reg(metadata={"models": ["m"]}))
    index = store.index
    clock.now += 1
    store.heartbeat("a")
    assert store.index == index
    store.update(reg(metadata={"models": ["m"]}))  # same data: nothing a watcher cares about
    assert store.index == index
    store.update(reg(metadata={"models": ["m", "n"]}))
    assert store.index == index + 1
    store.update(reg(port=81))
    assert store.index == index + 2
    assert store.deregister("a") is not None
    assert store.index == index + 3
    assert store.deregister("a") is None
    assert store.heartbeat("a") is None
    assert store.update(reg()) is None
    assert store.index == index + 3


def test_update_keeps_registration_time_and_resets_checks_on_move() -> None:
    clock = FakeClock()
    store = ServiceStore(ttl=10, clock=clock)
    record, _ = store.register(reg())
    store.record_check("a", False, url=record.url)
    clock.now += 5
    same_place = store.update(reg(weight=3))
    assert same_place is not None
    assert same_place.registered_at == 1000.0
    assert same_place.last_heartbeat == 1005.0
    assert same_place.consecutive_failures == 1  # same URL: the failed check still holds
    moved = store.update(reg(port=9))
    assert moved is not None
    assert moved.consecutive_failures == 0
    assert moved.status == "healthy"
    assert moved.url == "http://h:9"


def test_restore_resets_heartbeats_and_moves_index() -> None:
    clock = FakeClock(5000.0)
    store = ServiceStore(ttl=10, clock=clock)
    old = ServiceRecord.model_validate(
        {"name": "a", "host": "h", "port": 1, "registered_at": 1.0, "last_heartbeat": 2.0}
    )
    store.restore([old], index=41)
    restored = store.get("a")
    assert restored is not None
    assert restored.last_heartbeat == 5000.0
    assert restored.registered_at == 1.0
    assert restored.status == "healthy"
    assert store.index == 42


def test_filters_and_stats() -> None:
    store = ServiceStore(ttl=10, clock=FakeClock())
    store.register(reg("b", metadata={"models": ["m1", "m1"]}))
    record, _ = store.register(reg("a", type="babysitter"))
    store.record_check("a", False, url=record.url)
    assert [r.name for r in store.records()] == ["a", "b"]
    assert [r.name for r in store.records(healthy=True)] == ["b"]
    assert [r.name for r in store.records(type_="babysitter")] == ["a"]
    assert [r.name for r in store.records(model="m1")] == ["b"]
    assert store.records(model="m2") == []
    stats = store.stats()
    assert (stats.total, stats.healthy, stats.unhealthy) == (2, 1, 1)
    assert stats.by_type == {"openai-api": 1, "babysitter": 1}
    assert stats.by_model == {"m1": 1}


async def test_wait_returns_on_change() -> None:
    store = ServiceStore(ttl=10)
    waiter = asyncio.create_task(store.wait_for_change(store.index, 5.0))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    store.register(reg())
    await asyncio.wait_for(waiter, 1.0)


async def test_wait_times_out_and_returns_at_once_for_other_index() -> None:
    store = ServiceStore(ttl=10)
    started = time.monotonic()
    await store.wait_for_change(0, 0.1)
    assert 0.09 <= time.monotonic() - started < 1.0
    store.register(reg())
    started = time.monotonic()
    await store.wait_for_change(0, 5.0)  # behind
    await store.wait_for_change(99, 5.0)  # ahead: from an earlier registry
    assert time.monotonic() - started < 0.1


async def test_many_watchers_released_by_one_change_and_by_close() -> None:
    store = ServiceStore(ttl=10)
    waiters = [asyncio.create_task(store.wait_for_change(0, 5.0)) for _ in range(1000)]
    await asyncio.sleep(0.01)
    store.register(reg())
    await asyncio.wait_for(asyncio.gather(*waiters), 1.0)
    waiters = [asyncio.create_task(store.wait_for_change(1, 5.0)) for _ in range(10)]
    await asyncio.sleep(0.01)
    store.close()
    await asyncio.wait_for(asyncio.gather(*waiters), 1.0)
    await asyncio.wait_for(store.wait_for_change(1, 5.0), 1.0)


@pytest.mark.parametrize("ttl", [10.0, 0.0])
def test_stale_record_reads_unhealthy_after_expire(ttl: float) -> None:
    clock = FakeClock()
    store = ServiceStore(ttl=ttl, clock=clock)
    store.register(reg())
    clock.now += 100
    store.expire()
    expected = "unhealthy" if ttl else "healthy"
    assert present(store.get("a")).status == expected


def test_a_check_older_than_a_new_registration_or_verdict_is_ignored() -> None:
    clock = FakeClock()
    store = ServiceStore(ttl=10, clock=clock)
    record, _ = store.register(reg())
    started = clock.now  # a check starts while the old process is dying ...
    clock.now += 1
    store.register(reg())  # ... the restarted service registers anew ...
    clock.now += 1
    assert store.record_check("a", False, url=record.url, started=started) is None
    assert present(store.get("a")).status == "healthy"  # ... and the stale failure is ignored
    started = clock.now
    clock.now += 1
    store.heartbeat("a", "healthy")  # a newer verdict from the sender wins too
    assert store.record_check("a", False, url=record.url, started=started) is None
    # A check that started after both applies.
    updated = store.record_check("a", False, url=record.url, started=clock.now)
    assert updated is not None
    assert updated.status == "unhealthy"


def test_heartbeat_reports_count_as_checks() -> None:
    store = ServiceStore(ttl=10, clock=FakeClock())
    store.register(reg())
    index = store.index
    assert present(store.heartbeat("a", "unhealthy")).status == "unhealthy"
    assert store.index == index + 1  # a status flip wakes the watchers
    assert present(store.heartbeat("a")).status == "unhealthy"  # a plain heartbeat: no change
    assert present(store.heartbeat("a", "healthy")).status == "healthy"
