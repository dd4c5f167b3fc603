"""The router gauges the dashboards and alerts need beyond request counts.

``llmsvc_router_model_healthy_backends`` reads 0 for a model whose backends are
all unhealthy (the "no healthy backend" alert) and drops a model no backend lists;
``llmsvc_router_backend_passive_down`` shows passive health taking a backend out.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from llmsvc.core.records import ServiceRecord
from llmsvc.router.backends import BackendPool
from llmsvc.router.metrics import RouterMetrics


def record(name: str, *models: str, status: str = "healthy") -> ServiceRecord:
    return ServiceRecord.model_validate(
        {
            "name": name,
            "host": "127.0.0.1",
            "port": 1,
            "status": status,
            "metadata": {"models": list(models)},
        }
    )


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_healthy_backends_per_model() -> None:
    registry = CollectorRegistry()
    metrics = RouterMetrics(registry)
    pool = BackendPool(max_fails=1, fail_timeout=30)
    pool.set_registry(
        [record("a", "m1", "m2"), record("b", "m1"), record("c", "m2", status="unhealthy")]
    )
    metrics.refresh(pool, now=0)
    count = "llmsvc_router_model_healthy_backends"
    assert sample(registry, count, model_name="m1") == 2
    assert sample(registry, count, model_name="m2") == 1  # c is unhealthy

    pool.set_registry([record("a", "m1", "m2", status="unhealthy"), record("c", "m2")])
    metrics.refresh(pool, now=1)
    assert sample(registry, count, model_name="m1") == 0  # listed, none healthy
    assert sample(registry, count, model_name="m2") == 1

    pool.set_registry([record("c", "m2")])  # no backend lists m1 any more
    metrics.refresh(pool, now=2)
    assert sample(registry, count, model_name="m1") is None
    assert sample(registry, "llmsvc_router_backend_healthy", backend="a") is None


def test_passive_down_while_max_fails_keeps_a_backend_out() -> None:
    registry = CollectorRegistry()
    metrics = RouterMetrics(registry)
    pool = BackendPool(max_fails=1, fail_timeout=30)
    pool.set_registry([record("a", "m")])
    metrics.refresh(pool, now=0)
    assert sample(registry, "llmsvc_router_backend_passive_down", backend="a") == 0

    backend = pool.get("a")
    assert backend is not None and backend.passive.record_failure(now=10)
    metrics.refresh(pool, now=11)
    assert sample(registry, "llmsvc_router_backend_passive_down", backend="a") == 1
    assert sample(registry, "llmsvc_router_backend_healthy", backend="a") == 0
    assert sample(registry, "llmsvc_router_model_healthy_backends", model_name="m") == 0

    metrics.refresh(pool, now=41)  # fail_timeout over: on probation, routable again
    assert sample(registry, "llmsvc_router_backend_passive_down", backend="a") == 0
    assert sample(registry, "llmsvc_router_model_healthy_backends", model_name="m") == 1
