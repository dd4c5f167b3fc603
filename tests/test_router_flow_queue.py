"""Slots and the queue through a real router process in front of a real simulated engine,
and the dispatcher's liveness in process (every event that frees room grants a turn).

The engine answers in about ``max_tokens / 10`` seconds (``--decode-tokens-per-s 10``),
so a test holds a slot for as long as it needs. The router's ``/demand`` shows what
is in flight and what waits; every check waits for a state, never for a fixed time.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

import metrics
from llmsvc.core.records import ServiceRecord
from llmsvc.router.backends import BackendPool
from llmsvc.router.dispatch import Dispatcher
from llmsvc.router.priority import Priority
from llmsvc.router.settings import RouterSettings
from procs import HOST, ProcGroup, Spawn, start_router, start_sim_engine

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def engine(module_spawn: ProcGroup) -> int:
    """One simulated engine of model ``m``, about 10 tokens a second per request."""
    _, port = start_sim_engine(
        module_spawn, "slow", "--time-scale", "1", "--decode-tokens-per-s", "10",
        "--prefill-overhead-s", "0",
    )  # fmt: skip
    return port


def router_for(
    spawn: Spawn, tmp_path: Path, port: int, *flags: str, slots: int | None = None
) -> str:
    """A router whose one static backend is the engine (``metadata.max_concurrency``:
    ``slots``, when given)."""
    metadata: dict[str, Any] = {"models": ["m"]}
    if slots is not None:
        metadata["max_concurrency"] = slots
    services = tmp_path / "services.json"
    record = {"name": "slow", "host": HOST, "port": port, "metadata": metadata}
    services.write_bytes(orjson.dumps([record]))
    _, url = start_router(spawn, None, "--static-services", str(services), *flags)
    return url


def body(tokens: int) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": tokens}


async def chat(
    client: httpx.AsyncClient, tokens: int, priority: str | None = None
) -> httpx.Response:
    headers = {"X-Llmsvc-Priority": priority} if priority else {}
    return await client.post(CHAT, json=body(tokens), headers=headers, timeout=30)


async def demand_reaches(client: httpx.AsyncClient, in_flight: int, queued: int) -> None:
    """Wait (at most 10 s) until ``/demand`` shows model m with these counts."""
    deadline = time.monotonic() + 10
    while True:
        seen = (await client.get("/demand")).json()["models"]["m"]
        if (seen["in_flight"], seen["queued"]) == (in_flight, queued):
            return
        assert time.monotonic() < deadline, seen
        await asyncio.sleep(0.05)


async def rejected(client: httpx.AsyncClient, priority: str, reason: str) -> float:
    """``llmsvc_router_rejected_requests_total`` of model m for the class and reason."""
    text = (await client.get("/metrics")).text
    found = metrics.matching(
        text, "llmsvc_router_rejected_requests_total", model_name="m", priority=priority,
        reason=reason,
    )  # fmt: skip
    return sum(s.value for s in found)


async def test_a_backend_with_one_slot_takes_one_request_the_rest_queue_in_order(
    spawn: Spawn, tmp_path: Path, engine: int
) -> None:
    url = router_for(spawn, tmp_path, engine, slots=1)
    async with httpx.AsyncClient(base_url=url) as client:
        first = asyncio.create_task(chat(client, 15))
        await demand_reaches(client, 1, 0)
        rest = [asyncio.create_task(chat(client, 2)) for _ in range(2)]
        await demand_reaches(client, 1, 2)  # the engine never sees more than its slot
        demand = (await client.get("/demand")).json()
        assert demand["models"]["m"]["queued_by_priority"]["standard"] == 2
        assert demand["total"] == 3
        answers = [await first, *[await r for r in rest]]
        assert [r.status_code for r in answers] == [200, 200, 200]
        await demand_reaches(client, 0, 0)


async def test_backend_concurrency_flag_and_a_full_queue_is_429(
    spawn: Spawn, tmp_path: Path, engine: int
) -> None:
    url = router_for(spawn, tmp_path, engine, "--backend-concurrency", "1", "--queue-size", "1")
    async with httpx.AsyncClient(base_url=url) as client:
        first = asyncio.create_task(chat(client, 15))
        await demand_reaches(client, 1, 0)
        queued = asyncio.create_task(chat(client, 2))
        await demand_reaches(client, 1, 1)
        full = await chat(client, 2)
        assert full.status_code == 429, full.text
        error = full.json()["error"]
        assert (error["code"], error["type"]) == ("queue_full", "rate_limit_error")
        assert int(full.headers["Retry-After"]) >= 1
        assert (await first).status_code == 200 and (await queued).status_code == 200
        assert await rejected(client, "standard", "queue_full") == 1


async def test_a_higher_class_evicts_the_lowest_from_a_full_queue(
    spawn: Spawn, tmp_path: Path, engine: int
) -> None:
    url = router_for(spawn, tmp_path, engine, "--queue-size", "1", slots=1)
    async with httpx.AsyncClient(base_url=url) as client:
        first = asyncio.create_task(chat(client, 15))
        await demand_reaches(client, 1, 0)
        batch = asyncio.create_task(chat(client, 2, "batch"))
        await demand_reaches(client, 1, 1)
        critical = asyncio.create_task(chat(client, 2, "critical"))
        evicted = await batch  # the newcomer of a higher class takes its place
        assert evicted.status_code == 429 and evicted.json()["error"]["code"] == "queue_full"
        assert "Retry-After" in evicted.headers
        assert (await critical).status_code == 200 and (await first).status_code == 200
        assert await rejected(client, "batch", "queue_full") == 1  # counted in its own class
        assert await rejected(client, "critical", "queue_full") == 0


async def test_a_request_waiting_longer_than_the_queue_timeout_is_503(
    spawn: Spawn, tmp_path: Path, engine: int
) -> None:
    url = router_for(spawn, tmp_path, engine, "--queue-timeout", "0.5", slots=1)
    async with httpx.AsyncClient(base_url=url) as client:
        first = asyncio.create_task(chat(client, 30))
        await demand_reaches(client, 1, 0)
        started = time.monotonic()
        late = await chat(client, 2)
        assert late.status_code == 503, late.text
        assert late.json()["error"]["code"] == "queue_timeout"
        assert int(late.headers["Retry-After"]) >= 1
        assert time.monotonic() - started < 2.5  # not the 3 s the first request holds its slot
        await demand_reaches(client, 1, 0)  # it left the queue
        assert (await first).status_code == 200
        assert await rejected(client, "standard", "queue_timeout") == 1


async def test_without_slots_nothing_queues(spawn: Spawn, tmp_path: Path, engine: int) -> None:
    """The default (no slots anywhere): every request goes to the engine at once."""
    url = router_for(spawn, tmp_path, engine)
    async with httpx.AsyncClient(base_url=url) as client:
        tasks = [asyncio.create_task(chat(client, 10)) for _ in range(3)]
        await demand_reaches(client, 3, 0)
        assert [(await t).status_code for t in tasks] == [200, 200, 200]


# --- the dispatcher's liveness, in process (no engine): every event that frees room pumps


def dispatcher_with(slots: int, **options: Any) -> tuple[Dispatcher, BackendPool]:
    pool = BackendPool(max_fails=1, fail_timeout=10)
    metadata = {"models": ["m"], "max_concurrency": slots}
    pool.set_static([ServiceRecord(name="e", host=HOST, port=1, metadata=metadata)])
    return Dispatcher(pool=pool, settings=RouterSettings(**options)), pool


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_pump_grants_as_many_turns_as_free_slots_and_a_freed_slot_the_next() -> None:
    dispatcher, pool = dispatcher_with(2)
    (backend,) = pool
    assert dispatcher.active()

    async def take() -> None:
        await dispatcher.turn("m", Priority.STANDARD, "t", 10)
        backend.in_flight += 1  # what the proxy's attempt does at once

    tasks = [asyncio.create_task(take()) for _ in range(3)]
    await settle()
    assert [t.done() for t in tasks] == [True, True, False]
    assert backend.in_flight == 2 and dispatcher.queues.waiting("m") == 1
    backend.in_flight -= 1
    dispatcher.released(backend)  # an attempt ended
    await settle()
    assert tasks[2].done() and backend.in_flight == 2


async def test_a_granted_turn_cancelled_before_it_resumes_passes_to_the_next() -> None:
    dispatcher, pool = dispatcher_with(1)
    (backend,) = pool
    backend.in_flight = 1
    first = asyncio.create_task(dispatcher.turn("m", Priority.STANDARD, "a", 10))
    second = asyncio.create_task(dispatcher.turn("m", Priority.STANDARD, "b", 10))
    await settle()
    backend.in_flight = 0
    dispatcher.released(backend)  # grants the first ...
    first.cancel()  # ... whose client goes away before it resumes
    await settle()
    assert first.cancelled() and second.done()
    assert dispatcher.pending("m") == 0 and dispatcher.may_pass("m")


async def test_a_backend_becoming_eligible_pumps_its_models_line() -> None:
    dispatcher, pool = dispatcher_with(1)
    (backend,) = pool
    backend.record_check(False, 0.0)  # down: no free slot anywhere
    pool.health_changed()
    waiter = asyncio.create_task(dispatcher.turn("m", Priority.STANDARD, "t", 10))
    await settle()
    assert not waiter.done() and dispatcher.free("m", 1.0) == 0
    backend.record_check(True, 1.0)
    pool.health_changed()  # the health loop's report: the pool tells its listeners
    await settle()
    assert waiter.done()


def test_no_slots_anywhere_is_inactive() -> None:
    pool = BackendPool(max_fails=1, fail_timeout=10)
    pool.set_static([ServiceRecord(name="e", host=HOST, port=1, metadata={"models": ["m"]})])
    assert not Dispatcher(pool=pool, settings=RouterSettings()).active()
    assert Dispatcher(pool=pool, settings=RouterSettings(backend_concurrency=4)).active()
    assert Dispatcher(pool=pool, settings=RouterSettings(saturation_kv=0.9)).active()


async def test_a_saturated_backend_takes_nothing_until_a_scrape_shows_room(
    spawn: Spawn, tmp_path: Path
) -> None:
    """No slots, but --saturation-waiting 0: while the engine's own metrics (least_load's
    scrape) show a request waiting in it, a request waits in the router's queue; it goes
    when a later scrape shows the engine's queue empty. The engine's load comes from
    clients of its own, so no answer through the router marks that moment: only the
    scrape's completion does."""
    _, port = start_sim_engine(
        spawn, "one-seq", "--time-scale", "1", "--decode-tokens-per-s", "10",
        "--prefill-overhead-s", "0", "--max-num-seqs", "1",
    )  # fmt: skip
    url = router_for(
        spawn, tmp_path, port, "--strategy", "least_load", "--saturation-waiting", "0",
        "--load-scrape-interval", "0.5",
    )  # fmt: skip
    engine = f"http://{HOST}:{port}"
    async with (
        httpx.AsyncClient(base_url=url) as client,
        httpx.AsyncClient(base_url=engine) as direct,
    ):

        async def engine_waiting() -> int:
            (view,) = (await client.get("/services")).json()["services"]
            load = view["load"] or {}
            return int(load.get("waiting", -1)) if load.get("age_s", 9) < 1.5 else -1

        # Two requests straight to the engine: one runs (~4 s), then one waits in it.
        mine = [asyncio.create_task(chat(direct, 40))]
        running = b'vllm:num_requests_running{engine="0",model_name="m"} 1.0'
        deadline = time.monotonic() + 10
        while running not in (await direct.get("/metrics")).content:
            assert time.monotonic() < deadline, "the engine never ran the first request"
            await asyncio.sleep(0.02)
        mine.append(asyncio.create_task(chat(direct, 2)))
        deadline = time.monotonic() + 10
        while await engine_waiting() != 1:
            assert time.monotonic() < deadline, "the scrape never showed the engine's queue"
            await asyncio.sleep(0.05)
        queued = asyncio.create_task(chat(client, 2))
        await demand_reaches(client, 0, 1)  # saturated: the router keeps it
        assert [(await t).status_code for t in mine] == [200, 200]
        assert (await queued).status_code == 200  # a scrape saw room: it went


async def test_batch_leaves_the_headroom_free_for_an_interactive_request(
    spawn: Spawn, tmp_path: Path, engine: int
) -> None:
    """--batch-headroom 0.2 of 5 slots (one kept): batch requests take 4, the fifth waits; a
    standard request then starts at once on the slot kept free (without the headroom it
    would queue behind them: 4 in flight, 2 queued)."""
    url = router_for(spawn, tmp_path, engine, "--batch-headroom", "0.2", slots=5)
    async with httpx.AsyncClient(base_url=url) as client:
        batch = [asyncio.create_task(chat(client, 30, "batch")) for _ in range(5)]
        await demand_reaches(client, 4, 1)
        standard = asyncio.create_task(chat(client, 1, "standard"))
        await demand_reaches(client, 5, 1)  # in flight at once; the fifth batch still waits
        assert (await standard).status_code == 200
        assert all(r.status_code == 200 for r in await asyncio.gather(*batch))


async def test_without_headroom_batch_takes_every_slot(
    spawn: Spawn, tmp_path: Path, engine: int
) -> None:
    url = router_for(spawn, tmp_path, engine, "--batch-headroom", "0", slots=5)
    async with httpx.AsyncClient(base_url=url) as client:
        batch = [asyncio.create_task(chat(client, 20, "batch")) for _ in range(5)]
        await demand_reaches(client, 5, 0)
        assert all(r.status_code == 200 for r in await asyncio.gather(*batch))
