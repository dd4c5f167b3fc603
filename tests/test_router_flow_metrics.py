"""The router's flow-control metrics, read back from the registry's samples.

Queue, held and demand gauges come from a scrape-time ``ModelDemand`` per known model:
0 for a known model without traffic, gone for a model no longer known. The queue-wait
histogram, the rejections and the per-tenant counters are counted per request, and their
labelled children are cached (the hot path does no label lookup after the first).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from llmsvc.router.demand import ModelDemand
from llmsvc.router.metrics import QUEUE_WAIT_BUCKETS, SHED, Rejection, RouterMetrics
from llmsvc.router.priority import LABELS


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def demand(in_flight: int = 0, held: int = 0, **queued: int) -> ModelDemand:
    return ModelDemand(in_flight=in_flight, queued={p: queued.get(p, 0) for p in LABELS}, held=held)


def test_refresh_sets_queue_held_and_demand_per_model() -> None:
    registry = CollectorRegistry()
    metrics = RouterMetrics(registry)
    metrics.refresh_flow({"m1": demand(2, held=1, standard=5, batch=3), "m2": demand()})
    queue = "llmsvc_router_queue_requests"
    assert sample(registry, queue, model_name="m1", priority="standard") == 5
    assert sample(registry, queue, model_name="m1", priority="batch") == 3
    assert sample(registry, queue, model_name="m1", priority="critical") == 0
    assert sample(registry, "llmsvc_router_held_requests", model_name="m1") == 1
    assert sample(registry, "llmsvc_router_model_demand", model_name="m1") == 2 + 5 + 3 + 1
    # A known model without traffic reads 0 in every series, not "no data".
    for label in LABELS:
        assert sample(registry, queue, model_name="m2", priority=label) == 0
    assert sample(registry, "llmsvc_router_held_requests", model_name="m2") == 0
    assert sample(registry, "llmsvc_router_model_demand", model_name="m2") == 0


def test_refresh_drops_a_model_that_is_gone() -> None:
    registry = CollectorRegistry()
    metrics = RouterMetrics(registry)
    metrics.refresh_flow({"m1": demand(1, standard=2), "m2": demand(3)})
    metrics.refresh_flow({"m2": demand(1, sheddable=4)})
    for label in LABELS:
        assert (
            sample(registry, "llmsvc_router_queue_requests", model_name="m1", priority=label)
            is None
        )
    assert sample(registry, "llmsvc_router_held_requests", model_name="m1") is None
    assert sample(registry, "llmsvc_router_model_demand", model_name="m1") is None
    assert sample(registry, "llmsvc_router_model_demand", model_name="m2") == 5
    q = sample(registry, "llmsvc_router_queue_requests", model_name="m2", priority="sheddable")
    assert q == 4
    metrics.refresh_flow({"m1": demand()})  # known again: back, at 0
    assert sample(registry, "llmsvc_router_model_demand", model_name="m1") == 0
    assert sample(registry, "llmsvc_router_model_demand", model_name="m2") is None


def test_queue_wait_histogram_by_model_and_class() -> None:
    registry = CollectorRegistry()
    metrics = RouterMetrics(registry)
    metrics.observe_queue_wait("m", "standard", 0.002)
    metrics.observe_queue_wait("m", "standard", 12.0)
    metrics.observe_queue_wait("m", "batch", 90.0)
    name = "llmsvc_router_queue_wait_seconds"
    assert sample(registry, f"{name}_count", model_name="m", priority="standard") == 2
    total = sample(registry, f"{name}_sum", model_name="m", priority="standard")
    assert total == pytest.approx(12.002)
    le = {"model_name": "m", "priority": "standard"}
    assert registry.get_sample_value(f"{name}_bucket", {**le, "le": "0.005"}) == 1
    assert registry.get_sample_value(f"{name}_bucket", {**le, "le": "20.0"}) == 2
    batch = {"model_name": "m", "priority": "batch"}
    assert registry.get_sample_value(f"{name}_bucket", {**batch, "le": "60.0"}) == 0
    assert registry.get_sample_value(f"{name}_bucket", {**batch, "le": "120.0"}) == 1
    # From a slot freed at once to past the default --queue-timeout (60 s).
    assert QUEUE_WAIT_BUCKETS[0] <= 0.001 and QUEUE_WAIT_BUCKETS[-1] >= 300


def test_rejections_by_model_class_and_reason() -> None:
    registry = CollectorRegistry()
    metrics = RouterMetrics(registry)
    metrics.count_rejected("m", "sheddable", Rejection.QUEUE_FULL)
    metrics.count_rejected("m", "sheddable", "queue_full")
    metrics.count_rejected("m", "standard", Rejection.QUEUE_TIMEOUT)
    metrics.count_rejected("_unknown", "standard", Rejection.MAINTENANCE)
    name = "llmsvc_router_rejected_requests_total"
    assert sample(registry, name, model_name="m", priority="sheddable", reason="queue_full") == 2
    assert sample(registry, name, model_name="m", priority="standard", reason="queue_timeout") == 1
    assert sample(registry, name, model_name="m", priority="standard", reason="queue_full") is None
    got = sample(registry, name, model_name="_unknown", priority="standard", reason="maintenance")
    assert got == 1
    # The reasons the interface names, and the ones the shedding alert watches.
    assert {r.value for r in Rejection} == {
        "queue_full",
        "queue_timeout",
        "no_healthy_backend",
        "rate_limit_exceeded",
        "model_not_allowed",
        "maintenance",
        "draining",
    }
    assert {r.value for r in SHED} == {"queue_full", "queue_timeout", "no_healthy_backend"}


def test_tenant_requests_and_tokens() -> None:
    registry = CollectorRegistry()
    metrics = RouterMetrics(registry)
    metrics.count_tenant("team-a", "standard", 10, 4)
    metrics.count_tenant("team-a", "standard", 5, None)  # a stream without usage: no tokens
    metrics.count_tenant("team-a", "batch", None, None)
    metrics.count_tenant("anonymous", "critical", 0, 7)
    requests, tokens = "llmsvc_router_tenant_requests_total", "llmsvc_router_tenant_tokens_total"
    assert sample(registry, requests, tenant="team-a", priority="standard") == 2
    assert sample(registry, requests, tenant="team-a", priority="batch") == 1
    assert sample(registry, requests, tenant="anonymous", priority="critical") == 1
    assert sample(registry, tokens, tenant="team-a", kind="prompt") == 15
    assert sample(registry, tokens, tenant="team-a", kind="completion") == 4
    assert sample(registry, tokens, tenant="anonymous", kind="completion") == 7
    assert not sample(registry, tokens, tenant="anonymous", kind="prompt")


def test_labelled_children_are_cached() -> None:
    """After the first request of a label set, counting does no ``labels()`` lookup."""
    registry = CollectorRegistry()
    metrics = RouterMetrics(registry)
    metrics.observe_queue_wait("m", "standard", 0.1)
    metrics.count_rejected("m", "standard", "queue_full")
    metrics.count_tenant("t", "standard", 1, 1)

    def no_lookup(*_: str) -> None:
        raise AssertionError("labels() called on the hot path")

    for family in (metrics.queue_wait, metrics.rejected, metrics.tenant_requests):
        family.labels = no_lookup  # type: ignore[method-assign, assignment]
    metrics.tenant_tokens.labels = no_lookup  # type: ignore[method-assign, assignment]
    metrics.observe_queue_wait("m", "standard", 0.2)
    metrics.count_rejected("m", "standard", "queue_full")
    metrics.count_tenant("t", "standard", 2, 3)
    assert sample(registry, "llmsvc_router_tenant_tokens_total", tenant="t", kind="prompt") == 3


WORKER = """
import sys
from prometheus_client import CollectorRegistry
from llmsvc.router.demand import ModelDemand
from llmsvc.router.metrics import RouterMetrics
from llmsvc.router.priority import LABELS

metrics = RouterMetrics(CollectorRegistry())
queued = {p: 0 for p in LABELS} | {"standard": int(sys.argv[1])}
metrics.refresh_flow({"m": ModelDemand(in_flight=int(sys.argv[2]), queued=queued, held=1)})
"""


def test_with_workers_the_gauges_sum_over_them(tmp_path: Path) -> None:
    """``--workers``: each worker has its own queue, so a scrape reads their sum."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for queued, in_flight in ((3, 1), (4, 2)):  # two worker processes, one after the other
        subprocess.run(
            [sys.executable, "-c", WORKER, str(queued), str(in_flight)], env=env, check=True
        )
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))  # type: ignore[no-untyped-call]
    queue = "llmsvc_router_queue_requests"
    assert sample(registry, queue, model_name="m", priority="standard") == 7
    assert sample(registry, "llmsvc_router_held_requests", model_name="m") == 2
    assert sample(registry, "llmsvc_router_model_demand", model_name="m") == (3 + 1 + 1) + (
        4 + 2 + 1
    )
