"""charts/llmsvc's batch service: a one-replica StatefulSet on a volume claim, its Service,
the token it shares with the router, the router's --batch-url, NetworkPolicies and the
ServiceMonitor; real ``helm template`` renders, the flags parsed by each component's own
settings class."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from helmchart import (
    HelmError,
    component,
    component_args,
    component_settings,
    container,
    documents,
    notes,
    of_kind,
    pod_specs,
    render,
    validate_strict,
)
from llmsvc.batch.settings import BatchSettings
from llmsvc.router.settings import RouterSettings

BATCH_SECRET = "llmsvc-batch-token"
ROUTER_ADMIN_SECRET = "llmsvc-router-admin-token"
MONITORS = {"metrics": {"serviceMonitor": {"enabled": True}}}


def statefulset(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = of_kind(docs, "StatefulSet")
    return found


def of_component(docs: list[dict[str, Any]], kind: str, name: str) -> list[dict[str, Any]]:
    return [d for d in of_kind(docs, kind) if component(d) == name]


def env_refs(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container(docs, name).get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }


def test_one_replica_on_a_volume_claim_running_the_router_image() -> None:
    docs = documents(render())
    sts = statefulset(docs)
    assert sts["metadata"]["name"] == "llmsvc-batch"
    assert sts["spec"]["replicas"] == 1
    assert sts["spec"]["serviceName"] == "llmsvc-batch"
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "storageClassName" not in claim["spec"]  # the cluster's default class
    batch = container(docs, "batch")
    assert batch["image"] == "ghcr.io/llmsvc/router:0.1.0"
    mounts = {m["name"]: m["mountPath"] for m in batch["volumeMounts"]}
    assert mounts["data"] == "/var/lib/llmsvc/batch"
    (service,) = of_component(docs, "Service", "batch")
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8082, "targetPort": "http", "protocol": "TCP"}
    ]
    for doc in (sts, service, *of_component(docs, "Secret", "batch")):
        for version in ("1.27.0", kubernetes_validate.latest_version()):
            validate_strict(doc, version)


def test_the_batch_service_and_the_router_share_the_token() -> None:
    docs = documents(render())
    settings = component_settings(BatchSettings, docs, "batch")
    assert settings.router_url == "http://llmsvc-router:8080"
    assert str(settings.data_dir) == "/var/lib/llmsvc/batch"
    assert (settings.host, settings.port, settings.max_concurrency) == ("0.0.0.0", 8082, 64)
    assert settings.token is not None
    assert settings.token.get_secret_value() == f"{BATCH_SECRET}/token"  # from the mount
    router = component_settings(RouterSettings, docs, "router")
    assert router.batch_url == "http://llmsvc-batch:8082"
    assert router.batch_token is not None
    assert router.batch_token.get_secret_value() == f"{BATCH_SECRET}/token"
    assert env_refs(docs, "router")["LLMSVC_BATCH_TOKEN"] == {"name": BATCH_SECRET, "key": "token"}
    # Its --metrics-token (opens /metrics and /health only) is the router's admin token; the
    # probes send that one through the image's script, not the batch token.
    assert settings.metrics_token is not None
    assert settings.metrics_token.get_secret_value() == f"{ROUTER_ADMIN_SECRET}/token"
    batch = container(docs, "batch")
    for probe in ("readinessProbe", "livenessProbe"):
        assert batch[probe]["exec"]["command"] == [
            "/opt/llmsvc/bin/python", "/opt/llmsvc/healthcheck.py", "8082",
            "--token-file", "/var/run/llmsvc/metrics-token/token",
        ]  # fmt: skip
    (secret,) = of_component(docs, "Secret", "batch")
    assert secret["metadata"]["name"] == BATCH_SECRET


def test_values_reach_the_flags_and_the_claim() -> None:
    values = {
        "batch": {
            "maxConcurrency": 8,
            "storage": {"size": "50Gi", "storageClassName": "fast"},
            "extraArgs": ["--max-attempts", "2"],
            "token": {"existingSecret": "mine", "key": "t"},
        }
    }
    docs = documents(render(values=values))
    settings = component_settings(BatchSettings, docs, "batch")
    assert (settings.max_concurrency, settings.max_attempts) == (8, 2)
    assert settings.token is not None and settings.token.get_secret_value() == "mine/t"
    (claim,) = statefulset(docs)["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["storageClassName"] == "fast"
    assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert of_component(docs, "Secret", "batch") == []  # yours, not the chart's
    assert env_refs(docs, "router")["LLMSVC_BATCH_TOKEN"] == {"name": "mine", "key": "t"}


@pytest.mark.parametrize("replicas", [2, 5])
def test_more_than_one_replica_is_refused_with_the_reason(replicas: int) -> None:
    with pytest.raises(HelmError, match=r"batch.replicas: the batch service runs as one replica"):
        render(values={"batch": {"replicas": replicas}})
    assert (
        statefulset(documents(render(values={"batch": {"replicas": 0}})))["spec"]["replicas"] == 0
    )  # scaled down for maintenance is fine


@pytest.mark.parametrize(
    "values",
    [{"batch": {"enabled": False}}, {"router": {"enabled": False}}],
    ids=["batch-off", "no-router"],
)
def test_without_it_nothing_of_it_is_rendered(values: dict[str, Any]) -> None:
    docs = documents(render(values=values))
    assert not [d for d in docs if component(d) == "batch"]
    assert not any("batch" in name for name in pod_specs(docs))
    if values.get("router", {}).get("enabled", True):
        args = component_args(docs, "router")
        assert "--batch-url" not in args
        assert "LLMSVC_BATCH_TOKEN" not in env_refs(docs, "router")


def test_a_token_turned_off_leaves_the_batch_api_open() -> None:
    docs = documents(render(values={"batch": {"token": {"enabled": False}}, **MONITORS}))
    settings = component_settings(BatchSettings, docs, "batch")
    assert settings.token is None
    assert "LLMSVC_BATCH_TOKEN" not in env_refs(docs, "router")
    assert container(docs, "batch")["readinessProbe"]["exec"]["command"][3:] == []
    assert of_component(docs, "Secret", "batch") == []
    (monitor,) = of_component(docs, "ServiceMonitor", "batch")
    assert "authorization" not in monitor["spec"]["endpoints"][0]


def test_the_service_monitor_sends_the_router_admin_token_never_the_batch_token() -> None:
    """The batch token runs inference at the router as any tenant: Prometheus scrapes with
    the router's admin token (the batch service's --metrics-token), like the router's."""
    docs = documents(render(values=MONITORS))
    (monitor,) = of_component(docs, "ServiceMonitor", "batch")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    assert endpoint["authorization"] == {
        "type": "Bearer",
        "credentials": {"name": ROUTER_ADMIN_SECRET, "key": "token"},
    }
    assert BATCH_SECRET not in str(monitor)
    (router_monitor,) = of_component(docs, "ServiceMonitor", "router")
    assert router_monitor["spec"]["endpoints"][0]["authorization"] == endpoint["authorization"]
    mine = render(values={**MONITORS, "router": {"adminToken": {"existingSecret": "adm"}}})
    (monitor,) = of_component(documents(mine), "ServiceMonitor", "batch")
    assert monitor["spec"]["endpoints"][0]["authorization"]["credentials"]["name"] == "adm"
    assert component_settings(BatchSettings, documents(mine), "batch").metrics_token is not None


def test_without_a_router_admin_token_the_batch_token_is_not_handed_to_prometheus() -> None:
    values: dict[str, Any] = {"router": {"adminToken": {"enabled": False}}}
    docs = documents(render(values=values))
    settings = component_settings(BatchSettings, docs, "batch")
    assert settings.metrics_token is None  # the probes then use the batch token, in the pod
    command = container(docs, "batch")["readinessProbe"]["exec"]["command"]
    assert command[3:] == ["--token-file", "/var/run/llmsvc/batch-token/token"]
    (monitor,) = of_component(
        documents(render(values={**values, **MONITORS})), "ServiceMonitor", "batch"
    )
    assert "authorization" not in monitor["spec"]["endpoints"][0]  # 401, never the batch token
    assert BATCH_SECRET not in str(monitor)


def test_network_policies_let_only_routers_and_scrapers_in_and_batch_reach_the_router() -> None:
    monitoring = {"namespaceSelector": {"matchLabels": {"team": "monitoring"}}}
    web = {"namespaceSelector": {"matchLabels": {"team": "web"}}}
    values = {"networkPolicy": {"enabled": True, "metricsFrom": [monitoring], "routerFrom": [web]}}
    docs = documents(render(values=values))
    templates = {
        component(d): d["spec"]["template"]["metadata"]["labels"]
        for d in of_kind(docs, "Deployment", "StatefulSet")
    }

    def selected(peer: dict[str, Any]) -> list[str]:
        labels = peer.get("podSelector", {}).get("matchLabels")
        return [n for n, pod in templates.items() if labels and labels.items() <= pod.items()]

    (policy,) = of_component(docs, "NetworkPolicy", "batch")
    assert selected({"podSelector": policy["spec"]["podSelector"]}) == ["batch"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    router_peer, scraper = rule["from"]
    assert selected(router_peer) == ["router"]
    assert scraper == monitoring
    (router_policy,) = of_component(docs, "NetworkPolicy", "router")
    peers = router_policy["spec"]["ingress"][0]["from"]
    assert web in peers
    assert ["batch"] in [selected(p) for p in peers]  # its lines go through the router


def test_the_notes_point_at_the_batch_api_through_the_router() -> None:
    text = notes()
    assert "curl $ROUTER/v1/batches" in text
    assert "llmsvc-batch (one replica, its data on a 10Gi volume" in text
    assert "/v1/batches" not in notes("--set", "batch.enabled=false")
