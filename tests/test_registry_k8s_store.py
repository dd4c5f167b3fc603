"""Records of the Kubernetes source in the store and over the API, beside HTTP registrations."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from llmsvc.core.records import ServiceRecord, ServiceRegistration
from llmsvc.registry.app import create_app
from llmsvc.registry.settings import RegistrySettings
from llmsvc.registry.state import REGISTRY
from llmsvc.registry.store import ManagedElsewhere, ServiceStore

K8S = "kubernetes"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def k8s(name: str, *, status: str = "healthy", host: str = "10.0.0.1") -> ServiceRecord:
    return ServiceRecord.model_validate(
        {"name": name, "host": host, "port": 8000, "status": status,
         "metadata": {"models": ["m"], "source": K8S}}
    )  # fmt: skip


def reg(name: str) -> ServiceRegistration:
    return ServiceRegistration(name=name, host="h", port=80)


async def test_replace_source_swaps_the_set_in_one_change() -> None:
    store = ServiceStore(ttl=10, clock=FakeClock())
    store.register(reg("http-a"))
    base = store.index
    woken = asyncio.create_task(store.wait_for_change(base, 5))
    assert store.replace_source(K8S, [k8s("ns.p0"), k8s("ns.p1")])
    await asyncio.wait_for(woken, 1)
    assert store.index == base + 1, "two records, one move of the index"
    assert [r.name for r in store.records(source=K8S)] == ["ns.p0", "ns.p1"]
    assert [r.name for r in store.records(source="http")] == ["http-a"]
    assert store.source_of("ns.p0") == K8S and store.source_of("http-a") == "http"

    assert not store.replace_source(K8S, [k8s("ns.p0"), k8s("ns.p1")]), "nothing changed"
    assert store.index == base + 1
    assert store.replace_source(K8S, [k8s("ns.p1", status="unhealthy")])
    assert store.index == base + 2
    assert [(r.name, r.status) for r in store.records(source=K8S)] == [("ns.p1", "unhealthy")]
    assert store.get("http-a") is not None, "HTTP registrations stay"


def test_kubernetes_records_escape_ttl_checks_and_sweeps() -> None:
    clock = FakeClock()
    store = ServiceStore(ttl=10, clock=clock)
    store.replace_source(K8S, [k8s("ns.p0")])
    first = store.get("ns.p0")
    assert first is not None
    clock.now += 1000
    assert store.sweep() == [] and store.expire() == []
    assert store.record_check("ns.p0", False, url=first.url) is None, "checks do not apply"
    record = store.get("ns.p0")
    assert record is not None and record.healthy
    store.replace_source(K8S, [k8s("ns.p0")])
    again = store.get("ns.p0")
    assert again is not None
    assert again.registered_at == first.registered_at and again.last_heartbeat == clock.now


@pytest.mark.parametrize(
    "write",
    [
        lambda s: s.register(reg("ns.p0")),
        lambda s: s.update(reg("ns.p0")),
        lambda s: s.deregister("ns.p0"),
        lambda s: s.heartbeat("ns.p0"),
    ],
)
def test_http_writes_to_a_kubernetes_name_are_refused(write: Any) -> None:
    store = ServiceStore(ttl=10)
    store.replace_source(K8S, [k8s("ns.p0")])
    with pytest.raises(ManagedElsewhere):
        write(store)
    assert store.source_of("ns.p0") == K8S


def test_kubernetes_takes_over_a_name_held_by_http() -> None:
    store = ServiceStore(ttl=10)
    store.register(reg("ns.p0"))
    store.replace_source(K8S, [k8s("ns.p0")])
    record = store.get("ns.p0")
    assert record is not None and record.host == "10.0.0.1"
    store.replace_source(K8S, [])
    assert store.get("ns.p0") is None


@pytest.fixture
async def client(aiohttp_client: Any, tmp_path: Path) -> TestClient[Any, Any]:
    settings = RegistrySettings(
        health_interval=60,
        cleanup_interval=60,
        state_file=tmp_path / "state.json",
        allow_anonymous_writes=True,
    )
    app = create_app(settings, registry=CollectorRegistry())
    result: TestClient[Any, Any] = await aiohttp_client(app)
    app[REGISTRY].store.replace_source(K8S, [k8s("ns.p0"), k8s("ns.p1", status="unhealthy")])
    return result


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/services", {"name": "ns.p0", "host": "h", "port": 1}),
        ("PUT", "/services/ns.p0", {"host": "h", "port": 1}),
        ("DELETE", "/services/ns.p0", None),
        ("POST", "/services/ns.p0/heartbeat", None),
    ],
)
async def test_api_answers_409_for_a_kubernetes_record(
    client: TestClient[Any, Any], method: str, path: str, body: Any
) -> None:
    resp = await client.request(method, path, json=body)
    assert resp.status == 409, await resp.text()
    error = (await resp.json())["error"]
    assert error["code"] == "managed_by_source" and error["param"] == "name"
    assert "kubernetes" in error["message"]
    assert (await client.get("/services/ns.p0")).status == 200


async def test_reads_filters_metrics_and_state_file(
    client: TestClient[Any, Any], tmp_path: Path
) -> None:
    resp = await client.post("/services", json={"name": "http-a", "host": "h", "port": 1})
    assert resp.status == 201
    listed = await (await client.get("/services?model=m&healthy=true")).json()
    assert [s["name"] for s in listed["services"]] == ["ns.p0"]
    metrics = await (await client.get("/metrics")).text()
    assert "llmsvc_registry_kubernetes_records 2.0" in metrics
    health = await (await client.get("/health")).json()
    assert health["services"] == 3 and health["kubernetes"] is None  # static source
    state = tmp_path / "state.json"
    for _ in range(250):  # the state writer waits ~50 ms after a change
        if "http-a" in state.read_text():
            break
        await asyncio.sleep(0.02)
    saved = json.loads(state.read_text())
    assert [s["name"] for s in saved["services"]] == ["http-a"], "never persisted"
