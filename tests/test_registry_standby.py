"""Standby records in the registry: an engine whose babysitter stopped it or put it to sleep.

A heartbeat reporting ``standby`` makes the status ``standby`` until a heartbeat reports
otherwise; health checks leave it alone (its engine is down on purpose); the TTL still
expires it when the heartbeats stop; ``?healthy=true`` leaves it out; ``/stats`` and the
metrics count it. The store with a fake clock, then the API with a real health checker
against a port where nothing listens.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from llmsvc.core.records import ServiceRegistration
from llmsvc.registry.app import create_app
from llmsvc.registry.settings import RegistrySettings
from llmsvc.registry.store import ServiceStore
from procs import free_port
from registryapp import held, service


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def reg(name: str) -> ServiceRegistration:
    return ServiceRegistration(name=name, host="h", port=80)


def _status(store: ServiceStore, name: str) -> str:
    record = store.get(name)
    assert record is not None
    return record.status


def test_standby_holds_until_a_heartbeat_says_otherwise() -> None:
    clock = FakeClock()
    store = ServiceStore(ttl=10, clock=clock)
    record, _ = store.register(reg("a"))
    index = store.index
    store.heartbeat("a", "standby")
    assert _status(store, "a") == "standby"
    assert store.index == index + 1  # watchers (routers) hear of it
    store.heartbeat("a")  # a plain heartbeat keeps it
    assert _status(store, "a") == "standby"
    assert store.record_check("a", False, url=record.url) is None  # a check in flight: ignored
    assert _status(store, "a") == "standby"
    store.heartbeat("a", "healthy")
    assert _status(store, "a") == "healthy"
    store.heartbeat("a", "standby")
    store.heartbeat("a", "unhealthy")
    assert _status(store, "a") == "unhealthy"


def test_standby_expires_by_the_ttl_as_any_record() -> None:
    clock = FakeClock()
    store = ServiceStore(ttl=10, clock=clock)
    store.register(reg("a"))
    store.heartbeat("a", "standby")
    clock.now += 9
    store.heartbeat("a", "standby")
    clock.now += 9
    assert _status(store, "a") == "standby"  # heartbeated: kept however long
    clock.now += 2
    assert store.expire() == ["a"]
    assert _status(store, "a") == "unhealthy"
    clock.now += 10
    assert [r.name for r in store.sweep()] == ["a"]


def test_filters_and_stats_count_standby() -> None:
    store = ServiceStore(ttl=10, clock=FakeClock())
    for name in ("a", "b", "c"):
        store.register(reg(name))
    store.heartbeat("b", "standby")
    store.heartbeat("c", "unhealthy")
    assert [r.name for r in store.records(healthy=True)] == ["a"]
    assert [r.name for r in store.records(healthy=False)] == ["b", "c"]
    stats = store.stats()
    assert (stats.total, stats.healthy, stats.unhealthy, stats.standby) == (3, 1, 1, 1)


async def test_the_checker_leaves_a_standby_record_alone(aiohttp_client: Any) -> None:
    settings = RegistrySettings(
        health_interval=0.1, health_timeout=0.5, cleanup_interval=60, allow_anonymous_writes=True
    )
    client: TestClient[Any, Any] = await aiohttp_client(
        create_app(settings, registry=CollectorRegistry())
    )
    dead = free_port()  # nothing listens: every check of these records fails
    answers = {}
    for name in ("asleep", "awake"):
        resp = await client.post("/services", json={**service(name), "port": dead})
        assert resp.status == 201
        answers[name] = await resp.json()
    beat = await client.post(
        "/services/asleep/heartbeat", json={"status": "standby"}, headers=held(answers["asleep"])
    )
    assert beat.status == 200 and (await beat.json())["status"] == "standby"
    await asyncio.sleep(1.0)  # ten rounds of checks
    asleep = await (await client.get("/services/asleep")).json()
    awake = await (await client.get("/services/awake")).json()
    assert asleep["status"] == "standby" and asleep["consecutive_failures"] == 0
    assert awake["status"] == "unhealthy"  # the same checker did check the other one

    listed = await (await client.get("/services", params={"healthy": "true"})).json()
    assert listed["services"] == []
    stats = await (await client.get("/stats")).json()
    assert (stats["standby"], stats["unhealthy"], stats["healthy"]) == (1, 1, 0)
    text = await (await client.get("/metrics")).text()
    services = {
        (s.labels["type"], s.labels["status"]): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "llmsvc_registry_services"
    }
    assert services[("openai-api", "standby")] == 1
    assert services[("openai-api", "unhealthy")] == 1
