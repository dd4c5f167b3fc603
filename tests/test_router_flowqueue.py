"""The per-model queue: class order, tenant turns, eviction, timeouts, cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import pytest

from llmsvc.core.errors import ApiError, ServiceUnavailable
from llmsvc.router.flowqueue import FlowQueues, QueueFull, QueueTimeout, Ticket
from llmsvc.router.priority import Priority

M = "m"
LONG = 60.0
CRIT, STD, SHED, BATCH = Priority.CRITICAL, Priority.STANDARD, Priority.SHEDDABLE, Priority.BATCH


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Waiters:
    """One task per ticket waiting in ``queues``; what each one ended with."""

    def __init__(self, queues: FlowQueues) -> None:
        self.queues = queues
        self.served: list[Ticket] = []
        self.errors: dict[Ticket, ApiError] = {}
        self.tasks: dict[Ticket, asyncio.Task[None]] = {}

    def add(self, tickets: Iterable[Ticket], timeout: float = LONG) -> None:
        for ticket in tickets:
            self.tasks[ticket] = asyncio.create_task(self._wait(ticket, timeout))

    async def _wait(self, ticket: Ticket, timeout: float) -> None:
        try:
            await self.queues.wait(ticket, timeout)
        except ApiError as exc:
            self.errors[ticket] = exc
        else:
            self.served.append(ticket)

    async def settle(self) -> None:
        for _ in range(3):
            await asyncio.sleep(0)

    async def grant(self, times: int = 1, model: str = M) -> None:
        for _ in range(times):
            assert self.queues.grant(model)
            await self.settle()

    async def close(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)


def join(queues: FlowQueues, tenant: str, n: int = 1, priority: Priority = STD) -> list[Ticket]:
    return [queues.join(M, priority, tenant) for _ in range(n)]


async def test_strict_order_between_classes() -> None:
    queues = FlowQueues(size=100)
    waiters = Waiters(queues)
    batch, std, crit, shed = (join(queues, "a", 2, p) for p in (BATCH, STD, CRIT, SHED))
    waiters.add([*batch, *std, *crit, *shed])
    await waiters.settle()
    await waiters.grant(8)
    assert waiters.served == [*crit, *std, *shed, *batch]
    assert not queues.grant(M)
    await waiters.close()


async def test_a_heavy_tenant_does_not_starve_a_light_one() -> None:
    queues = FlowQueues(size=2000)
    waiters = Waiters(queues)
    heavy = join(queues, "heavy", 1000)
    light = join(queues, "light", 3)
    waiters.add([*heavy, *light])
    await waiters.settle()
    await waiters.grant(6)
    assert set(light) <= set(waiters.served)
    assert waiters.served == [heavy[0], light[0], heavy[1], light[1], heavy[2], light[2]]
    await waiters.grant(5)
    assert waiters.served[6:] == heavy[3:8]  # alone: the heavy one's own order
    await waiters.close()


async def test_tenants_take_turns_in_rotation_and_fifo_within() -> None:
    queues = FlowQueues(size=100)
    waiters = Waiters(queues)
    a, b, c = join(queues, "a", 3), join(queues, "b", 2), join(queues, "c", 1)
    waiters.add([*a, *b, *c])
    await waiters.settle()
    await waiters.grant(6)
    assert waiters.served == [a[0], b[0], c[0], a[1], b[1], a[2]]
    await waiters.close()


async def test_full_queue_evicts_the_lowest_class_heaviest_tenant_newest() -> None:
    queues = FlowQueues(size=5)
    waiters = Waiters(queues)
    x = join(queues, "x", 2, BATCH)
    y = join(queues, "y", 1, BATCH)
    shed = join(queues, "y", 1, SHED)
    std = join(queues, "x", 1, STD)
    waiters.add([*x, *y, *shed, *std])
    await waiters.settle()

    newcomer = queues.join(M, STD, "z")
    await waiters.settle()
    assert list(waiters.errors) == [x[1]]
    evicted = waiters.errors[x[1]]
    assert isinstance(evicted, QueueFull) and evicted.evicted
    assert (evicted.status, evicted.code, evicted.type) == (429, "queue_full", "rate_limit_error")
    assert evicted.headers == {"Retry-After": "1"}
    assert "Evicted from the queue for model 'm'" in evicted.message
    assert queues.waiting(M) == 5
    assert queues.depth(M) == {CRIT: 0, STD: 2, SHED: 1, BATCH: 2}

    critical = queues.join(M, CRIT, "z")
    await waiters.settle()
    assert len(waiters.errors) == 2  # batch again, not sheddable: the lowest class first
    assert queues.depth(M) == {CRIT: 1, STD: 2, SHED: 1, BATCH: 1}
    waiters.add([newcomer, critical])
    await waiters.settle()
    await waiters.grant(5)
    assert waiters.served[:2] == [critical, std[0]]
    assert shed[0] in waiters.served and x[1] not in waiters.served
    await waiters.close()


async def test_a_newcomer_with_nothing_below_it_is_refused() -> None:
    queues = FlowQueues(size=3)
    waiters = Waiters(queues)
    queued = join(queues, "a", 3, STD)
    waiters.add(queued)
    for priority, tenant in ((STD, "a"), (SHED, "b"), (BATCH, "b")):
        with pytest.raises(QueueFull) as caught:
            queues.join(M, priority, tenant)
        err = caught.value
        assert not err.evicted and err.status == 429 and err.code == "queue_full"
        assert err.message == "Queue for model 'm' is full (3 waiting)"
        assert err.headers == {"Retry-After": "1"}
    await waiters.settle()
    assert waiters.errors == {} and queues.waiting(M) == 3
    await waiters.close()


def test_size_zero_refuses_every_request() -> None:
    queues = FlowQueues(size=0)
    for priority in Priority:
        with pytest.raises(QueueFull):
            queues.join(M, priority, "a")
    assert queues.waiting(M) == 0 and queues.models() == []


async def test_timeout_leaves_the_queue_with_503() -> None:
    clock = Clock()
    queues = FlowQueues(size=10, clock=clock)
    waiters = Waiters(queues)
    (ticket,) = join(queues, "a")
    clock.now += 60
    waiters.add([ticket], timeout=0.01)
    await asyncio.wait_for(asyncio.gather(*waiters.tasks.values()), 10)
    err = waiters.errors[ticket]
    assert isinstance(err, QueueTimeout)
    assert (err.status, err.code, err.type) == (503, "queue_timeout", "service_unavailable_error")
    assert err.message.startswith("Waited 60s in the queue for model 'm'")
    assert err.headers == {"Retry-After": "60"}  # nothing was served meanwhile: the wait again
    assert queues.waiting(M) == 0 and queues.models() == [] and not queues.grant(M)


async def test_timeout_retry_after_follows_the_pace_of_the_queue() -> None:
    clock = Clock()
    queues = FlowQueues(size=20, clock=clock)
    waiters = Waiters(queues)
    tickets = join(queues, "a", 10)
    waiters.add(tickets[:9])
    await waiters.settle()
    await waiters.grant(8)
    clock.now += 16  # 8 served in 16 s; one still ahead of the last: about 4 s
    waiters.add(tickets[9:], timeout=0.01)
    await asyncio.wait_for(waiters.tasks[tickets[9]], 10)
    err = waiters.errors[tickets[9]]
    assert isinstance(err, QueueTimeout) and err.headers == {"Retry-After": "4"}
    assert err.message.startswith("Waited 16s")
    await waiters.close()


async def test_cancelled_waiter_leaves_the_queue() -> None:
    queues = FlowQueues(size=10)
    waiters = Waiters(queues)
    (ticket,) = join(queues, "a")
    waiters.add([ticket])
    await waiters.settle()
    waiters.tasks[ticket].cancel()
    await waiters.settle()
    assert waiters.tasks[ticket].cancelled()
    assert queues.waiting(M) == 0 and queues.models() == [] and not queues.grant(M)


async def test_grant_skips_a_ticket_cancelled_but_not_yet_resumed() -> None:
    queues = FlowQueues(size=10)
    waiters = Waiters(queues)
    first, second = join(queues, "a", 2)
    waiters.add([first, second])
    await waiters.settle()
    waiters.tasks[first].cancel()  # its task has not run since
    assert queues.grant(M)
    await waiters.settle()
    assert waiters.served == [second]
    assert waiters.tasks[first].cancelled()
    assert queues.granted(M) == 0 and queues.waiting(M) == 0


async def test_a_turn_given_to_a_ticket_cancelled_before_it_resumed_passes_on() -> None:
    queues = FlowQueues(size=10)
    waiters = Waiters(queues)
    first, second, third = join(queues, "a", 3)
    waiters.add([first, second, third])
    await waiters.settle()
    assert queues.grant(M)
    assert queues.granted(M) == 1
    waiters.tasks[first].cancel()  # the client left before its task took the turn
    await waiters.settle()
    assert waiters.tasks[first].cancelled()
    assert waiters.served == [second]
    assert queues.granted(M) == 0 and queues.waiting(M) == 1
    await waiters.close()


async def test_a_turn_given_before_wait_is_kept() -> None:
    queues = FlowQueues(size=10)
    (ticket,) = join(queues, "a")
    assert queues.grant(M)
    assert queues.granted(M) == 1 and queues.waiting(M) == 0
    await asyncio.wait_for(queues.wait(ticket, LONG), 1)
    assert queues.granted(M) == 0


async def test_requeue_goes_to_the_front_of_its_tenants_line() -> None:
    queues = FlowQueues(size=10)
    waiters = Waiters(queues)
    a1, b1, a2 = queues.join(M, STD, "a"), queues.join(M, STD, "b"), queues.join(M, STD, "a")
    waiters.add([a1, b1, a2])
    await waiters.settle()
    await waiters.grant()
    assert waiters.served == [a1]
    queues.requeue(a1)  # no room after all
    waiters.add([a1])
    await waiters.settle()
    assert queues.ahead(a1) == 1  # b1 had the next turn already
    await waiters.grant(3)
    assert waiters.served == [a1, b1, a1, a2]


async def test_requeue_of_a_lone_tenant_keeps_its_turn() -> None:
    queues = FlowQueues(size=10)
    waiters = Waiters(queues)
    a1, b1, b2 = queues.join(M, STD, "a"), queues.join(M, STD, "b"), queues.join(M, STD, "b")
    waiters.add([a1, b1, b2])
    await waiters.settle()
    await waiters.grant()
    queues.requeue(a1)  # a's line was empty: a goes first again, not after b
    waiters.add([a1])
    await waiters.settle()
    await waiters.grant(3)
    assert waiters.served == [a1, a1, b1, b2]


async def test_close_ends_every_wait_and_refuses_newcomers() -> None:
    queues = FlowQueues(size=10)
    waiters = Waiters(queues)
    tickets = [*join(queues, "a", 2), *join(queues, "b", 1, BATCH)]
    waiters.add(tickets)
    await waiters.settle()

    def draining(ticket: Ticket) -> ApiError:
        return ServiceUnavailable(f"draining {ticket.tenant}", code="draining")

    queues.close(draining)
    await waiters.settle()
    assert {t: e.message for t, e in waiters.errors.items()} == {
        tickets[0]: "draining a",
        tickets[1]: "draining a",
        tickets[2]: "draining b",
    }
    assert queues.waiting(M) == 0 and queues.models() == []
    with pytest.raises(ServiceUnavailable):
        queues.join(M, CRIT, "c")


async def test_a_ticket_requeued_after_close_gets_the_drain_error() -> None:
    queues = FlowQueues(size=10)
    (ticket,) = join(queues, "a")
    assert queues.grant(M)
    await queues.wait(ticket, LONG)
    queues.close(lambda t: ServiceUnavailable("draining", code="draining"))
    queues.requeue(ticket)  # its backend had no room after all, and the router is stopping
    with pytest.raises(ServiceUnavailable):
        await asyncio.wait_for(queues.wait(ticket, LONG), 1)
    assert queues.waiting(M) == 0 and queues.models() == []


def test_depth_ahead_waiting_models() -> None:
    queues = FlowQueues(size=100)
    assert queues.depth(M) == {CRIT: 0, STD: 0, SHED: 0, BATCH: 0}
    assert queues.models() == [] and queues.waiting(M) == 0
    a = join(queues, "a", 3)
    b = join(queues, "b", 1)
    other = queues.join("other", BATCH, "a")
    assert queues.waiting(M) == 4 and queues.waiting("other") == 1
    assert sorted(queues.models()) == ["m", "other"]
    # turns: a0, b0, a1, a2
    assert [queues.ahead(t) for t in (a[0], b[0], a[1], a[2])] == [0, 1, 2, 3]
    crit = queues.join(M, CRIT, "b")
    assert queues.ahead(crit) == 0
    assert [queues.ahead(t) for t in (a[0], b[0], a[1], a[2])] == [1, 2, 3, 4]
    assert queues.depth(M) == {CRIT: 1, STD: 4, SHED: 0, BATCH: 0}
    assert queues.ahead(other) == 0
    assert queues.grant(M)  # crit
    assert queues.ahead(crit) == 0 and queues.waiting(M) == 4


def test_ticket_records_its_request() -> None:
    clock = Clock()
    queues = FlowQueues(size=1, clock=clock)
    ticket = queues.join("model-x", SHED, "tenant-1")
    assert (ticket.model, ticket.priority, ticket.tenant, ticket.since) == (
        "model-x",
        SHED,
        "tenant-1",
        100.0,
    )


async def test_a_tenant_filling_a_full_queue_gives_way_to_another_of_its_class() -> None:
    """Nothing below: the heaviest tenant of the newcomer's class loses its newest ticket
    when it holds at least two more than the newcomer's tenant; else the newcomer is
    refused (two tenants end up sharing the places, none locks the other out)."""
    queues = FlowQueues(size=4)
    waiters = Waiters(queues)
    heavy = join(queues, "big", 4, STD)
    waiters.add(heavy)
    small = join(queues, "small", 2, STD)  # big 4 -> 3 -> 2 places
    waiters.add(small)
    with pytest.raises(QueueFull) as caught:  # big 2, small 2: nobody is crowding
        queues.join(M, STD, "small")
    assert not caught.value.evicted
    await waiters.settle()
    assert set(waiters.errors) == set(heavy[2:])  # big's two newest
    assert all(isinstance(e, QueueFull) and e.evicted for e in waiters.errors.values())
    assert queues.waiting(M) == 4
    await waiters.close()


async def test_a_tenant_with_nothing_waiting_gets_the_next_turn() -> None:
    """A light tenant's ticket goes before a heavy tenant's backlog (fq_codel's new
    flows), newcomers among themselves in their order of arrival; then turns alternate."""
    queues = FlowQueues(size=100)
    waiters = Waiters(queues)
    waiters.add(join(queues, "big", 5, STD))
    await waiters.settle()
    await waiters.grant()  # big's first: big now waits with 4
    waiters.add(join(queues, "small", 1, STD))
    waiters.add(join(queues, "other", 1, STD))
    await waiters.settle()
    await waiters.grant(6)
    tenants = [t.tenant for t in waiters.served]
    assert tenants == ["big", "small", "other", "big", "big", "big", "big"]
    await waiters.close()
