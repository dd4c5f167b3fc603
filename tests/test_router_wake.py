"""The router wakes one standby engine for the requests held for its model.

Real processes (a registry with a write token, a router) and stand-in babysitters: small
aiohttp apps in the test's loop whose records say ``standby`` (the babysitter's
``metadata.state``, its engine record's status), which count every ``POST /wake`` with
its ``Authorization`` and, woken, start a real simulated engine and report it healthy.
Five concurrent held requests wake exactly one babysitter and are all answered; of two
standby babysitters only one is woken, and when the first refuses (500) the second is.

In process, with an injected clock: a standby engine record is known and never
eligible, neither health-checked nor woken while another engine is on its way, a wake
the registry never shows is forgotten after the hold timeout (the next babysitter is
woken), the babysitter that wakes fastest goes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

import metrics
from llmsvc.core.records import BABYSITTER, ServiceRecord, ServiceRegistration, Status
from llmsvc.core.registry_client import RegistryClient
from llmsvc.router.backends import BackendPool
from llmsvc.router.health import _unproven
from llmsvc.router.metrics import RouterMetrics
from llmsvc.router.wake import Outcome, Waker
from procs import (
    HOST,
    Spawn,
    free_port,
    spawn_sim_engine,
    start_babysitter,
    start_registry,
    start_router,
)

TOKEN = "registry-secret"
ADMIN = "admin-secret"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
CHAT = "/v1/chat/completions"
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@dataclass
class Sitter:
    """A stand-in babysitter of model ``m`` whose engine is in standby.

    ``answer`` is what ``POST /wake`` gets (202, or an error status). Woken (202), it says
    ``waking`` in its record, starts a simulated engine on its engine port with ``start``,
    reports that engine healthy once it answers and then says ``ready``.
    """

    name: str
    answer: int = 202
    wake_seconds: float = 30.0
    start: Callable[[str, int], object] | None = None
    wakes: list[str | None] = field(default_factory=list)  # each wake's Authorization
    port: int = 0
    engine_port: int = field(default_factory=free_port)
    client: RegistryClient | None = None
    leases: dict[str, str] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def engine(self) -> str:
        return f"{self.name}-engine"

    async def health(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def wake(self, request: web.Request) -> web.Response:
        self.wakes.append(request.headers.get("Authorization"))
        if self.answer != 202:
            return web.json_response({"error": {"message": "no"}}, status=self.answer)
        task = asyncio.create_task(self._wake_up())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return web.json_response({"state": "waking"}, status=202)

    async def _wake_up(self) -> None:
        await self.say("waking", starting_since=time.time())
        assert self.start is not None, f"{self.name} was not meant to be woken"
        self.start(self.engine, self.engine_port)
        async with httpx.AsyncClient() as client:
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    resp = await client.get(f"http://{HOST}:{self.engine_port}/health")
                    if resp.status_code == 200:
                        break
                assert time.monotonic() < deadline, "the engine never started"
                await asyncio.sleep(0.05)
        await self.beat(self.engine, "healthy")
        await self.say("ready", starting_since=None)

    async def register(self, client: RegistryClient) -> None:
        """Its engine record (then ``standby``) and its own record (``standby``)."""
        self.client = client
        engine = ServiceRegistration(
            name=self.engine, host=HOST, port=self.engine_port, metadata={"models": ["m"]}
        )
        self.leases[self.engine] = (await client.register(engine)).lease
        await self.beat(self.engine, "standby")
        await self.say("standby")

    async def say(self, state: str, **metadata: Any) -> None:
        assert self.client is not None
        record = ServiceRegistration(
            name=self.name,
            host=HOST,
            port=self.port,
            type=BABYSITTER,
            metadata={
                "model_name": "m",
                "engine_service": self.engine,
                "state": state,
                "wake_seconds": self.wake_seconds,
                "startup_seconds": 60.0,
            }
            | metadata,
        )
        registered = await self.client.register(record, lease=self.leases.get(self.name))
        self.leases[self.name] = registered.lease

    async def beat(self, name: str, status: Status) -> None:
        assert self.client is not None
        assert await self.client.heartbeat(name, status, lease=self.leases[name])


@contextlib.asynccontextmanager
async def serving(*sitters: Sitter) -> AsyncIterator[None]:
    """Serve each stand-in on a free port of 127.0.0.1 while inside."""
    runners = []
    for sitter in sitters:
        app = web.Application()
        app.router.add_get("/health", sitter.health)
        app.router.add_post("/wake", sitter.wake)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        sitter.port = free_port()
        await web.TCPSite(runner, HOST, sitter.port).start()
        runners.append(runner)
    try:
        yield
    finally:
        for sitter in sitters:
            for task in list(sitter.tasks):
                task.cancel()
        for runner in runners:
            await runner.cleanup()


@contextlib.asynccontextmanager
async def registered(registry: str, *sitters: Sitter) -> AsyncIterator[None]:
    async with aiohttp.ClientSession() as session:
        client = RegistryClient(base_url=registry, session=session, token=TOKEN)
        for sitter in sitters:
            await sitter.register(client)
        yield


def engine_starter(spawn: Spawn) -> Callable[[str, int], object]:
    return lambda name, port: spawn_sim_engine(spawn, name, port)


def stack(spawn: Spawn) -> str:
    """A registry with a write token."""
    _, registry = start_registry(spawn, token=TOKEN)
    return registry


def router_for(spawn: Spawn, registry: str) -> str:
    """A router that reads ``registry`` with its token and holds up to 60 s (a Python
    process can take seconds to start on a busy machine)."""
    _, router = start_router(
        spawn, registry, "--registry-token", TOKEN, "--admin-token", ADMIN,
        "--hold-timeout", "60", "--hold-feedback-interval", "0.2",
    )  # fmt: skip
    return router


async def stream_comments(client: httpx.AsyncClient) -> list[str]:
    async with client.stream("POST", CHAT, json=BODY | {"stream": True}, timeout=90) as resp:
        assert resp.status_code == 200
        lines = [line async for line in resp.aiter_lines() if line]
    assert lines[-1] == "data: [DONE]", lines
    return [line for line in lines if line.startswith(":")]


async def test_five_held_requests_wake_exactly_one_babysitter(spawn: Spawn) -> None:
    registry = stack(spawn)
    sitter = Sitter("sitter-a", start=engine_starter(spawn))
    async with serving(sitter), registered(registry, sitter):
        router = router_for(spawn, registry)
        async with httpx.AsyncClient(base_url=router) as client:
            models = (await client.get("/v1/models")).json()["data"]
            assert [m["id"] for m in models] == ["m"]  # its engine in standby: known
            services = (await client.get("/services", headers=AUTH)).json()["services"]
            (engine,) = [s for s in services if s["name"] == sitter.engine]
            assert engine["record"]["status"] == "standby" and not engine["eligible"]
            plain = [
                asyncio.create_task(client.post(CHAT, json=BODY, timeout=90)) for _ in range(4)
            ]
            comments = await stream_comments(client)
            answers = await asyncio.gather(*plain)
            demand = (await client.get("/demand", headers=AUTH)).json()
            text = (await client.get("/metrics", headers=AUTH)).text
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    assert sitter.wakes == [f"Bearer {TOKEN}"]  # one wake, with the registry token
    assert comments and re.fullmatch(r": waiting for m: \d ahead, about \d+ s", comments[0])
    assert demand["models"]["m"]["ready"] == 1
    wakes = 'llmsvc_router_wakes_total{model_name="m",outcome="%s"}'
    assert metrics.value(text, wakes % "woken") == 1


async def test_two_standby_babysitters_only_one_is_woken(spawn: Spawn) -> None:
    registry = stack(spawn)
    first, second = Sitter("sitter-a", start=engine_starter(spawn)), Sitter("sitter-b")
    async with serving(first, second), registered(registry, first, second):
        router = router_for(spawn, registry)
        async with httpx.AsyncClient(base_url=router) as client:
            answers = await asyncio.gather(
                *(client.post(CHAT, json=BODY, timeout=90) for _ in range(3))
            )
    assert [a.status_code for a in answers] == [200] * 3
    assert len(first.wakes) == 1 and second.wakes == []  # by name: a, then b


async def test_a_refused_wake_wakes_the_next_babysitter(spawn: Spawn) -> None:
    registry = stack(spawn)
    refusing = Sitter("sitter-a", answer=500)
    second = Sitter("sitter-b", start=engine_starter(spawn))
    async with serving(refusing, second), registered(registry, refusing, second):
        router = router_for(spawn, registry)
        async with httpx.AsyncClient(base_url=router) as client:
            answer = await client.post(CHAT, json=BODY, timeout=90)
            text = (await client.get("/metrics", headers=AUTH)).text
    assert answer.status_code == 200, answer.text
    assert answer.headers["X-Llmsvc-Backend"] == second.engine
    assert len(refusing.wakes) == 1 and len(second.wakes) == 1
    wakes = 'llmsvc_router_wakes_total{model_name="m",outcome="%s"}'
    assert metrics.value(text, wakes % "failed") == 1
    assert metrics.value(text, wakes % "woken") == 1


def slow_engine_starter(spawn: Spawn) -> Callable[[str, int], object]:
    """Engines that decode 4 tokens per second (real time): max_tokens 20 takes 5 s."""
    slow = ("--time-scale", "1", "--decode-tokens-per-s", "4")
    return lambda name, port: spawn_sim_engine(spawn, name, port, *slow)


@contextlib.asynccontextmanager
async def one_awake_one_asleep(
    spawn: Spawn, *router_args: str
) -> AsyncIterator[tuple[httpx.AsyncClient, Sitter, Sitter]]:
    """Babysitter a's slow engine awake (the router sees it ready), b in standby: woken,
    b stays ``waking`` (its engine never comes)."""
    registry = stack(spawn)
    awake = Sitter("sitter-a", start=slow_engine_starter(spawn))
    asleep = Sitter("sitter-b", start=lambda *_: None)
    async with serving(awake, asleep), registered(registry, awake, asleep):
        await awake._wake_up()  # up before the router starts, without a POST /wake
        _, router = start_router(
            spawn, registry, "--registry-token", TOKEN, "--admin-token", ADMIN,
            "--hold-timeout", "60", *router_args,
        )  # fmt: skip
        async with httpx.AsyncClient(base_url=router) as client:
            deadline = time.monotonic() + 30
            while (await client.get("/demand", headers=AUTH)).json()["models"]["m"]["ready"] < 1:
                assert time.monotonic() < deadline, "the router never saw the awake engine"
                await asyncio.sleep(0.05)
            yield client, awake, asleep


@pytest.mark.parametrize(("target", "woken"), [("8", 1), ("0", 0)])
async def test_demand_past_the_wake_target_wakes_another_engine(
    spawn: Spawn, target: str, woken: int
) -> None:
    """One engine awake, one babysitter in standby, 20 slow requests at once: with
    --wake-target 8 they want ceil(20/8) = 3 engines, 1 is ready and 1 in standby, so the
    standby one gets exactly one wake although nothing is ever held; with 0, none."""
    async with one_awake_one_asleep(spawn, "--wake-target", target) as (client, awake, asleep):
        body = BODY | {"max_tokens": 20}  # 5 s each
        answers = await asyncio.gather(
            *(client.post(CHAT, json=body, timeout=90) for _ in range(20))
        )
        text = (await client.get("/metrics", headers=AUTH)).text
    assert [a.status_code for a in answers] == [200] * 20, [a.text for a in answers]
    assert {a.headers["X-Llmsvc-Backend"] for a in answers} == {awake.engine}
    assert awake.wakes == []
    assert asleep.wakes == [f"Bearer {TOKEN}"] * woken
    woke = metrics.matching(text, 'llmsvc_router_wakes_total{model_name="m",outcome="woken"}')
    assert sum(s.value for s in woke) == woken


async def test_requests_joining_the_line_wake_another_engine_before_a_slot_frees(
    spawn: Spawn,
) -> None:
    """With 4 slots, 12 requests of 50 s: 4 in flight, 8 in the line, demand 12 wants 2
    engines. The wake comes when they join the line, not 50 s later when a slot frees."""
    async with one_awake_one_asleep(spawn, "--backend-concurrency", "4") as (c, _, asleep):
        body = BODY | {"max_tokens": 200}
        requests = [asyncio.create_task(c.post(CHAT, json=body, timeout=90)) for _ in range(12)]
        try:
            deadline = time.monotonic() + 30
            while not asleep.wakes:
                assert time.monotonic() < deadline, "no wake while the line grew"
                await asyncio.sleep(0.05)
            demand = (await c.get("/demand", headers=AUTH)).json()["models"]["m"]
            assert not any(r.done() for r in requests)
        finally:
            for request in requests:
                request.cancel()
            await asyncio.gather(*requests, return_exceptions=True)
    assert asleep.wakes == [f"Bearer {TOKEN}"]
    assert demand["in_flight"] == 4 and demand["queued"] >= 5, demand  # 9 or more wanted 2


@pytest.mark.slow
async def test_a_real_babysitter_asleep_is_woken_once_for_five_held_requests(
    spawn: Spawn,
) -> None:
    """End to end: ``llmsvc babysitter --engine sim --idle-timeout 1 --standby sleep``."""
    registry = stack(spawn)
    _, _, api = start_babysitter(
        spawn, registry, "sleepy", "--registry-token", TOKEN, "--idle-timeout", "1",
        "--standby", "sleep", model="m",
        engine_args=("--time-scale", "1", "--wake-delay", "1", "--startup-delay", "0"),
    )  # fmt: skip
    router = router_for(spawn, registry)
    async with httpx.AsyncClient(base_url=router) as client:
        deadline = time.monotonic() + 30
        while (await client.get(f"{api}/status")).json()["state"] != "standby":
            assert time.monotonic() < deadline, "never went to standby"
            await asyncio.sleep(0.1)
        while (await client.get("/demand", headers=AUTH)).json()["models"]["m"]["ready"]:
            assert time.monotonic() < deadline, "the router still routes to it"
            await asyncio.sleep(0.05)
        plain = [asyncio.create_task(client.post(CHAT, json=BODY, timeout=90)) for _ in range(4)]
        comments = await stream_comments(client)
        answers = await asyncio.gather(*plain)
        standby = (await client.get(f"{api}/status")).json()["standby"]
        text = (await client.get("/metrics", headers=AUTH)).text
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    assert standby["wakes"] == 1 and standby["last_wake_seconds"] >= 1
    assert comments and comments[0].startswith(": waiting for m: ")
    wakes = 'llmsvc_router_wakes_total{model_name="m",outcome="%s"}'
    assert metrics.value(text, wakes % "woken") == 1


# --- in process: the waker's decisions, on a real pool, with stand-ins on real sockets


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sitter_record(sitter: Sitter, state: str, **metadata: Any) -> ServiceRecord:
    return ServiceRecord(
        name=sitter.name,
        host=HOST,
        port=sitter.port,
        type=BABYSITTER,
        metadata={"model_name": "m", "state": state, "wake_seconds": sitter.wake_seconds}
        | metadata,
    )


def engine_record(sitter: Sitter, status: Status) -> ServiceRecord:
    return ServiceRecord(
        name=sitter.engine,
        host=HOST,
        port=sitter.engine_port,
        metadata={"models": ["m"]},
        status=status,
    )


@dataclass
class Setup:
    pool: BackendPool
    waker: Waker
    clock: Clock
    held: dict[str, int]
    counted: list[tuple[str, Outcome]]


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    pool = BackendPool(max_fails=1, fail_timeout=10)
    clock = Clock()
    held: dict[str, int] = {}
    counted: list[tuple[str, Outcome]] = []
    waker = Waker(
        pool,
        held=lambda m: held.get(m, 0),
        token=TOKEN,
        memory=20,
        count=lambda m, o: counted.append((m, o)),
        clock=clock,
    )
    async with aiohttp.ClientSession() as session:
        waker.attach(session)
        yield Setup(pool, waker, clock, held, counted)
        await waker.close()


async def settled(setup: Setup, count: int) -> None:
    """Until ``count`` wakes have been answered (and counted)."""
    deadline = time.monotonic() + 5
    while len(setup.counted) < count:
        assert time.monotonic() < deadline, setup.counted
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # and nothing more follows at once


def test_a_standby_engine_record_is_known_and_never_eligible() -> None:
    pool = BackendPool(max_fails=1, fail_timeout=10)
    sitter = Sitter("s", port=1)
    pool.set_registry([engine_record(sitter, "standby")])
    (backend,) = pool
    assert pool.knows("m") and pool.known_models() == ["m"]
    assert backend.standby and not backend.healthy(time.monotonic())
    assert not pool.eligible("m", time.monotonic())
    pool.set_registry([engine_record(sitter, "healthy")])  # woken
    assert not backend.standby and len(pool.eligible("m", time.monotonic())) == 1


async def test_no_wake_without_held_requests_or_while_one_is_on_its_way(setup: Setup) -> None:
    a, b = Sitter("a"), Sitter("b")
    async with serving(a, b):
        setup.pool.set_registry([sitter_record(a, "waking"), sitter_record(b, "standby")])
        setup.waker.consider("m")  # nothing held
        setup.held["m"] = 3
        setup.waker.consider("m")  # a is waking: b stays asleep
        setup.pool.set_registry([sitter_record(a, "starting"), sitter_record(b, "standby")])
        setup.waker.consider("m")
        await asyncio.sleep(0.2)
    assert a.wakes == [] and b.wakes == [] and setup.counted == []


async def test_a_ready_engine_means_no_wake(setup: Setup) -> None:
    a, b = Sitter("a"), Sitter("b")
    async with serving(a, b):
        setup.pool.set_registry(
            [sitter_record(a, "ready"), engine_record(a, "healthy"), sitter_record(b, "standby")]
        )
        setup.held["m"] = 1
        setup.waker.consider("m")
        await asyncio.sleep(0.2)
    assert b.wakes == []


async def test_the_fastest_to_wake_goes_first(setup: Setup) -> None:
    slow, fast = Sitter("a-slow", wake_seconds=20), Sitter("b-fast", wake_seconds=2)
    async with serving(slow, fast):
        setup.pool.set_registry([sitter_record(slow, "standby"), sitter_record(fast, "standby")])
        setup.held["m"] = 1
        for _ in range(3):  # repeated holds and pool changes: still one wake
            setup.waker.consider("m")
        await settled(setup, 1)
    assert fast.wakes == [f"Bearer {TOKEN}"] and slow.wakes == []
    assert setup.counted == [("m", Outcome.WOKEN)]


async def test_a_wake_the_registry_never_shows_is_forgotten_after_the_hold_timeout(
    setup: Setup,
) -> None:
    """a answers 202 but its record stays standby: after the memory, b is woken."""
    a, b = Sitter("a"), Sitter("b")
    async with serving(a, b):
        records = [sitter_record(a, "standby"), sitter_record(b, "standby")]
        setup.pool.set_registry(records)
        setup.held["m"] = 1
        setup.waker.consider("m")
        await settled(setup, 1)
        setup.pool.set_registry(records)  # a refresh that still says standby
        setup.clock.now += 19
        setup.waker.consider("m")
        await asyncio.sleep(0.1)
        assert (len(a.wakes), len(b.wakes)) == (1, 0)  # remembered: no second wake
        setup.clock.now += 2  # past the hold timeout
        setup.waker.consider("m")
        await settled(setup, 2)
    assert (len(a.wakes), len(b.wakes)) == (1, 1)


async def test_a_babysitter_that_went_back_to_standby_is_tried_after_the_others(
    setup: Setup,
) -> None:
    a, b = Sitter("a"), Sitter("b")
    async with serving(a, b):
        setup.pool.set_registry([sitter_record(a, "standby"), sitter_record(b, "standby")])
        setup.held["m"] = 1
        setup.waker.consider("m")
        await settled(setup, 1)
        setup.pool.set_registry([sitter_record(a, "waking"), sitter_record(b, "standby")])
        setup.waker.consider("m")
        setup.pool.set_registry([sitter_record(a, "standby"), sitter_record(b, "standby")])
        setup.waker.consider("m")  # its wake failed: b's turn
        await settled(setup, 2)
    assert (len(a.wakes), len(b.wakes)) == (1, 1)


async def test_a_babysitter_that_served_and_went_idle_is_still_the_first_choice(
    setup: Setup,
) -> None:
    """Its wake worked (the registry showed it waking, then ready): no penalty."""
    a, b = Sitter("a"), Sitter("b")
    async with serving(a, b):
        setup.pool.set_registry([sitter_record(a, "standby"), sitter_record(b, "standby")])
        setup.held["m"] = 1
        setup.waker.consider("m")
        await settled(setup, 1)
        setup.pool.set_registry([sitter_record(a, "waking"), sitter_record(b, "standby")])
        setup.held["m"] = 0  # served once it is up
        setup.pool.set_registry(
            [sitter_record(a, "ready"), engine_record(a, "healthy"), sitter_record(b, "standby")]
        )
        setup.clock.now += 5
        setup.pool.set_registry([sitter_record(a, "standby"), sitter_record(b, "standby")])
        setup.held["m"] = 1  # idle, then a new request
        setup.waker.consider("m")
        await settled(setup, 2)
    assert (len(a.wakes), len(b.wakes)) == (2, 0)


async def test_a_lone_babysitter_that_failed_is_asked_again_later(setup: Setup) -> None:
    """Nothing else calls the waker: its own timer asks again after FAILED_RETRY_S."""
    a = Sitter("a", answer=503)
    async with serving(a):
        setup.pool.set_registry([sitter_record(a, "standby")])
        setup.held["m"] = 1
        setup.waker.consider("m")
        await settled(setup, 1)
        setup.clock.now += 2.5  # the timer runs on the loop's clock; the waker's says 2.5 s on
        deadline = time.monotonic() + 10
        while len(a.wakes) < 2:
            assert time.monotonic() < deadline, a.wakes
            await asyncio.sleep(0.05)
    assert setup.counted[:2] == [("m", Outcome.FAILED), ("m", Outcome.FAILED)]


async def test_an_unreachable_babysitter_is_counted_and_skipped(setup: Setup) -> None:
    gone, b = Sitter("a", port=free_port()), Sitter("b")  # nothing listens on a's port
    async with serving(b):
        setup.pool.set_registry([sitter_record(gone, "standby"), sitter_record(b, "standby")])
        setup.held["m"] = 1
        setup.waker.consider("m")
        await settled(setup, 2)
    assert setup.counted == [("m", Outcome.UNREACHABLE), ("m", Outcome.WOKEN)]
    assert len(b.wakes) == 1


def test_the_health_loop_skips_standby_engines() -> None:
    """The router's own health checks leave a standby engine alone (it would only fail)."""
    pool = BackendPool(max_fails=1, fail_timeout=10)
    a, b = Sitter("a", port=1), Sitter("b", port=2)
    pool.set_registry([engine_record(a, "standby"), engine_record(b, "unhealthy")])
    for backend in pool:
        backend.record_check(False, time.monotonic())
    assert [x.name for x in _unproven(pool, set())] == [b.engine]


def test_a_model_all_in_standby_has_no_healthy_backends_series() -> None:
    """Idle on purpose is not an outage: LLMSvcNoHealthyBackend must not fire for it."""
    registry = CollectorRegistry()
    router_metrics = RouterMetrics(registry)
    pool = BackendPool(max_fails=1, fail_timeout=10)
    a, b = Sitter("a", port=1), Sitter("b", port=2)
    pool.set_registry([engine_record(a, "standby")])
    router_metrics.refresh(pool, time.monotonic())
    series = "llmsvc_router_model_healthy_backends"
    assert registry.get_sample_value(series, {"model_name": "m"}) is None
    pool.set_registry([engine_record(a, "standby"), engine_record(b, "unhealthy")])
    router_metrics.refresh(pool, time.monotonic())
    assert registry.get_sample_value(series, {"model_name": "m"}) == 0  # b is down: alert


@pytest.fixture
async def growing() -> AsyncIterator[tuple[Setup, dict[str, int]]]:
    """A waker with a demand and ``--wake-target 8``."""
    pool = BackendPool(max_fails=1, fail_timeout=10)
    clock = Clock()
    held: dict[str, int] = {}
    demand: dict[str, int] = {}
    counted: list[tuple[str, Outcome]] = []
    waker = Waker(
        pool,
        held=lambda m: held.get(m, 0),
        token=TOKEN,
        memory=20,
        count=lambda m, o: counted.append((m, o)),
        demand=lambda m: demand.get(m, 0),
        target=8,
        clock=clock,
    )
    async with aiohttp.ClientSession() as session:
        waker.attach(session)
        yield Setup(pool, waker, clock, held, counted), demand
        await waker.close()


async def test_twenty_held_requests_wake_three_at_once(
    growing: tuple[Setup, dict[str, int]],
) -> None:
    setup, demand = growing
    sitters = [Sitter(name) for name in "abcd"]
    async with serving(*sitters):
        setup.pool.set_registry([sitter_record(s, "standby") for s in sitters])
        setup.held["m"] = demand["m"] = 20
        for _ in range(3):  # asked again before the registry shows them: no more
            setup.waker.consider("m")
        await settled(setup, 3)
    assert [len(s.wakes) for s in sitters] == [1, 1, 1, 0]  # by name


async def test_grew_wakes_only_a_model_with_a_standby_babysitter(
    growing: tuple[Setup, dict[str, int]],
) -> None:
    setup, demand = growing
    a, b = Sitter("a"), Sitter("b")
    async with serving(a, b):
        records = [sitter_record(a, "ready"), engine_record(a, "healthy")]
        setup.pool.set_registry(records)
        demand["m"] = 9
        setup.waker.grew("m")  # no babysitter of m in standby: nothing
        setup.waker.grew("other")
        setup.pool.set_registry([*records, sitter_record(b, "standby")])
        demand["m"] = 8
        setup.waker.grew("m")  # 8 on the one ready engine: enough
        await asyncio.sleep(0.1)
        assert b.wakes == []
        demand["m"] = 9
        setup.waker.grew("m")
        await settled(setup, 1)
    assert b.wakes == [f"Bearer {TOKEN}"] and a.wakes == []


async def test_a_woken_babysitter_ready_before_its_engine_is_still_on_its_way(
    setup: Setup,
) -> None:
    """Its record says ready a refresh before its engine is healthy here: the requests
    still held then do not wake the next babysitter (part G's agreement run saw that)."""
    a, b = Sitter("a"), Sitter("b")
    async with serving(a, b):
        engine = {"engine_service": a.engine}
        setup.pool.set_registry(
            [sitter_record(a, "standby", **engine), sitter_record(b, "standby")]
        )
        setup.held["m"] = 2
        setup.waker.consider("m")
        await settled(setup, 1)
        setup.pool.set_registry([sitter_record(a, "waking", **engine), sitter_record(b, "standby")])
        setup.waker.consider("m")
        up = [sitter_record(a, "ready", **engine), engine_record(a, "unhealthy")]
        setup.pool.set_registry([*up, sitter_record(b, "standby")])
        setup.waker.consider("m")  # a is ready by its record, its engine not yet: wait
        await asyncio.sleep(0.1)
        assert (len(a.wakes), len(b.wakes)) == (1, 0)
        setup.pool.set_registry(
            [sitter_record(a, "ready", **engine), engine_record(a, "healthy"),
             sitter_record(b, "standby")]
        )  # fmt: skip
        setup.held["m"] = 0  # served
        setup.clock.now += 1
        setup.pool.set_registry(
            [sitter_record(a, "ready", **engine), sitter_record(b, "standby")]
        )  # a's engine record gone (a later idle, say): a's wake was done, b may go
        setup.held["m"] = 1
        setup.waker.consider("m")
        await settled(setup, 2)
    assert (len(a.wakes), len(b.wakes)) == (1, 1)
