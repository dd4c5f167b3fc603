"""Every strategy end to end: a real router process in front of real simulated engines.

Three ``llmsvc sim-engine`` processes (``a``, ``b``, ``c``, at most two sequences
each, so a loaded engine queues) are started once for the module; each test
starts its own router on them with ``--static-services`` and ``--strategy``.
The answer's ``X-Llmsvc-Backend`` header says which backend served a request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import aiohttp
import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry

from llmsvc.core.records import ServiceRecord
from llmsvc.router.backends import BackendPool
from llmsvc.router.loadscrape import LoadScraper
from procs import HOST, Proc, ProcGroup, Spawn, free_port, start_router, wait_until

MODEL = "m"
CLIENT = httpx.Client(timeout=10)  # one keep-alive client: the requests, not connects, count
NAMES = ("a", "b", "c")


def sim_engine(spawn: Spawn | ProcGroup, name: str, port: int) -> Proc:
    proc = spawn(
        f"sim-{name}",
        "sim-engine",
        "--port",
        str(port),
        "--engine-id",
        name,
        "--model-name",
        MODEL,
        "--max-num-seqs",
        "2",
        "--time-scale",
        "0.05",
    )
    proc.wait_http(f"http://{HOST}:{port}/health")
    return proc


@pytest.fixture(scope="module")
def engines(module_spawn: ProcGroup) -> dict[str, int]:
    """Three running engines: name -> port."""
    ports = {name: free_port() for name in NAMES}
    for name, port in ports.items():
        sim_engine(module_spawn, name, port)
    return ports


@pytest.fixture(scope="module")
def services(engines: dict[str, int], tmp_path_factory: pytest.TempPathFactory) -> str:
    """The static services file of the three engines."""
    records = [
        {"name": n, "host": HOST, "port": p, "metadata": {"models": [MODEL]}}
        for n, p in engines.items()
    ]
    path = tmp_path_factory.mktemp("strategies") / "services.json"
    path.write_bytes(orjson.dumps({"services": records}))
    return str(path)


def router(spawn: Spawn, services: str, strategy: str, *extra: str) -> str:
    _, url = start_router(
        spawn, None, "--static-services", services, "--strategy", strategy, *extra
    )
    return url


def ask(url: str, *, headers: dict[str, str] | None = None, **body: object) -> str:
    """Send one short chat request; the backend that served it."""
    payload = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    resp = CLIENT.post(f"{url}/v1/chat/completions", json=payload | body, headers=headers or {})
    assert resp.status_code == 200, resp.text
    return resp.headers["X-Llmsvc-Backend"]


def test_round_robin_cycles_and_scrapes_nothing(spawn: Spawn, services: str) -> None:
    url = router(spawn, services, "round_robin")
    assert Counter(ask(url) for _ in range(6)) == Counter({"a": 2, "b": 2, "c": 2})
    metrics = CLIENT.get(f"{url}/metrics").text
    assert "llmsvc_router_load_scrape_errors_total" not in metrics  # no scraper runs


def test_least_connections_spreads_sequential_requests(spawn: Spawn, services: str) -> None:
    url = router(spawn, services, "least_connections")
    assert {ask(url) for _ in range(6)} == set(NAMES)


def forwarded(url: str, client: str) -> str:
    return ask(url, headers={"X-Forwarded-For": client})


def test_ip_hash_honours_forwarded_for_only_from_trusted_proxies(
    spawn: Spawn, services: str
) -> None:
    clients = [f"198.51.100.{i}" for i in range(16)]
    untrusting = router(spawn, services, "ip_hash")
    assert len({forwarded(untrusting, c) for c in clients}) == 1  # all from 127.0.0.1
    trusting = router(spawn, services, "ip_hash", "--trusted-proxies", "127.0.0.0/8")
    first = {c: forwarded(trusting, c) for c in clients}
    assert len(set(first.values())) >= 2
    assert {c: forwarded(trusting, c) for c in clients[:8]} == {c: first[c] for c in clients[:8]}


def test_session_sticks_by_header_then_user(spawn: Spawn, services: str) -> None:
    url = router(spawn, services, "session")
    by_header = {s: ask(url, headers={"X-Session-Id": s}) for s in map(str, range(16))}
    assert len(set(by_header.values())) >= 2
    for session in ("1", "2", "3"):
        assert ask(url, headers={"X-Session-Id": session}) == by_header[session]
        assert ask(url, headers={"X-Session-Id": session}, user="someone") == by_header[session]
    alice = {ask(url, user="alice") for _ in range(4)}
    assert len(alice) == 1


def test_prefix_affinity_keeps_a_conversation_on_one_engine(spawn: Spawn, services: str) -> None:
    url = router(spawn, services, "prefix_affinity", "--prefix-length", "64")

    def conversation(system: str, turns: int) -> str:
        messages = [{"role": "system", "content": system}]
        for turn in range(turns):
            messages.append({"role": "user", "content": f"question {turn}"})
        return ask(url, messages=messages)

    systems = [f"You are assistant number {i}, answer briefly." for i in range(12)]
    home = {s: conversation(s, 1) for s in systems}
    assert len(set(home.values())) >= 2
    for system in systems[:4]:
        assert {conversation(system, turns) for turns in (2, 3)} == {home[system]}


async def test_least_load_avoids_the_engine_that_scrapes_busy(
    spawn: Spawn, services: str, engines: dict[str, int]
) -> None:
    url = router(spawn, services, "least_load", "--load-scrape-interval", "0.2")
    busy_url = f"http://{HOST}:{engines['a']}"
    # 8,000 tokens at 40 tokens/s, time scale 0.05: 10 s, longer than the test
    long = {"model": MODEL, "prompt": "busy " * 50, "max_tokens": 8000, "stream": True}
    async with httpx.AsyncClient(timeout=30) as client:

        async def occupy() -> None:  # straight to engine a, not through the router
            async with client.stream("POST", f"{busy_url}/v1/completions", json=long) as resp:
                async for _ in resp.aiter_bytes():
                    pass

        tasks = [asyncio.create_task(occupy()) for _ in range(4)]  # 2 running, 2 waiting
        try:

            def a_scraped_busy() -> bool:
                views = CLIENT.get(f"{url}/services").json()["services"]
                load = next(v for v in views if v["name"] == "a")["load"]
                return load is not None and load["running"] == 2 and load["waiting"] == 2

            await asyncio.to_thread(wait_until, a_scraped_busy, timeout=10, what="a busy")
            served = [await asyncio.to_thread(ask, url) for _ in range(8)]
            assert "a" not in served
            assert set(served) == {"b", "c"}
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def test_a_failed_scrape_keeps_the_last_load(spawn: Spawn) -> None:
    port = free_port()
    engine = sim_engine(spawn, "scraped", port)
    pool = BackendPool(max_fails=1, fail_timeout=30.0)
    record = {"name": "e", "host": HOST, "port": port, "metadata": {"models": [MODEL]}}
    pool.set_static([ServiceRecord.model_validate(record)])
    backend = pool.get("e")
    assert backend is not None
    registry = CollectorRegistry()
    async with aiohttp.ClientSession() as session:
        scraper = LoadScraper(pool=pool, session=session, timeout=2.0, registry=registry)
        await scraper.scrape_all()
        first = backend.load
        assert first is not None and (first.running, first.waiting) == (0, 0)
        engine.kill()
        await scraper.scrape_all()
    assert backend.load is first
    errors = registry.get_sample_value("llmsvc_router_load_scrape_errors_total", {"backend": "e"})
    assert errors == 1
