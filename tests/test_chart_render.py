"""charts/llmsvc: helm lint, real renders valid under kubernetes-validate --strict, the values
schema, and the flags and environment the chart gives each component parsed by that
component's own settings class (so the chart can only pass flags that exist)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from helmchart import (
    ALL_FEATURES,
    CHART,
    HelmError,
    component,
    component_settings,
    container,
    documents,
    helm,
    of_kind,
    render,
    validate_strict,
)
from llmsvc.batch.settings import BatchSettings
from llmsvc.core.settings import BaseServiceSettings, env_name
from llmsvc.operator.settings import OperatorSettings
from llmsvc.registry.settings import RegistrySettings
from llmsvc.router.settings import RouterSettings
from tools import ROOT

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest known.
K8S_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
SETTINGS: dict[str, type[BaseServiceSettings]] = {
    "router": RouterSettings,
    "registry": RegistrySettings,
    "operator": OperatorSettings,
    "batch": BatchSettings,
}


@pytest.fixture(scope="module")
def default_docs() -> list[dict[str, Any]]:
    return documents(render())


@pytest.fixture(scope="module")
def all_docs() -> list[dict[str, Any]]:
    return documents(render("-f", ALL_FEATURES))


@pytest.mark.parametrize(
    "args", [(), ("--strict",), ("--strict", "-f", ALL_FEATURES)], ids=["default", "strict", "all"]
)
def test_helm_lint_passes(args: tuple[str, ...]) -> None:
    out = helm("lint", CHART, *args).stdout
    assert "0 chart(s) failed" in out, out
    assert "[WARNING]" not in out and "[ERROR]" not in out, out


def test_default_render_has_the_three_components(default_docs: list[dict[str, Any]]) -> None:
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in default_docs)
    assert kinds == [
        "ClusterRole/llmsvc-operator",
        "ClusterRole/llmsvc-registry",
        "ClusterRoleBinding/llmsvc-operator",
        "ClusterRoleBinding/llmsvc-registry",
        "Deployment/llmsvc-operator",
        "Deployment/llmsvc-registry",
        "Deployment/llmsvc-router",
        "PodDisruptionBudget/llmsvc-router",
        "Role/llmsvc-operator-routers",
        "RoleBinding/llmsvc-operator-routers",
        "Secret/llmsvc-batch-token",
        "Secret/llmsvc-registry-admin-token",
        "Secret/llmsvc-registry-token",
        "Secret/llmsvc-router-admin-token",
        "Service/llmsvc-batch",
        "Service/llmsvc-operator",
        "Service/llmsvc-registry",
        "Service/llmsvc-router",
        "ServiceAccount/llmsvc-batch",
        "ServiceAccount/llmsvc-operator",
        "ServiceAccount/llmsvc-registry",
        "ServiceAccount/llmsvc-router",
        "StatefulSet/llmsvc-batch",
    ]


def test_all_features_render_has_every_optional_object(all_docs: list[dict[str, Any]]) -> None:
    kinds = {d["kind"] for d in all_docs}
    assert {"HorizontalPodAutoscaler", "Ingress", "NetworkPolicy", "PodDisruptionBudget"} <= kinds
    assert {"ServiceMonitor", "PrometheusRule", "ConfigMap"} <= kinds
    # A user's existingSecret replaces the chart's token Secrets; the API keys Secret is ours.
    secrets = [s["metadata"]["name"] for s in of_kind(all_docs, "Secret")]
    assert secrets == ["llmsvc-router-api-keys"]
    (router,) = [d for d in of_kind(all_docs, "Deployment") if component(d) == "router"]
    assert "replicas" not in router["spec"], "the HPA owns the router's replica count"


@pytest.mark.parametrize("which", ["default_docs", "all_docs"])
def test_render_is_valid_kubernetes(which: str, request: pytest.FixtureRequest) -> None:
    docs: list[dict[str, Any]] = request.getfixturevalue(which)
    checked = 0
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # CRDs of the Prometheus operator: kubernetes-validate has no schema
        for version in K8S_VERSIONS:
            validate_strict(doc, version)
        checked += 1
    assert checked >= 15


def test_the_validation_can_fail(default_docs: list[dict[str, Any]]) -> None:
    (service, *_) = of_kind(default_docs, "Service")
    broken = {**service, "spec": {**service["spec"], "clusterIp": "None"}}
    for version in K8S_VERSIONS:
        with pytest.raises(jsonschema.ValidationError, match="'clusterIp' was unexpected"):
            validate_strict(broken, version)
        with pytest.raises(kubernetes_validate.ValidationError):  # the library agrees
            kubernetes_validate.validate(broken, version, strict=True)


def test_prometheus_operator_objects_have_their_shape(all_docs: list[dict[str, Any]]) -> None:
    """kubernetes-validate does not know ServiceMonitor and PrometheusRule: check them here."""
    monitors = of_kind(all_docs, "ServiceMonitor")
    assert sorted(component(m) for m in monitors) == [
        "batch", "engine", "operator", "registry", "router"
    ]  # fmt: skip
    for monitor in monitors:
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        spec = monitor["spec"]
        assert set(spec) == {"selector", "namespaceSelector", "endpoints"}
        for endpoint in spec["endpoints"]:
            # The router's /metrics needs its admin token (tests/test_chart_tokens.py), the
            # batch service's its token (tests/test_chart_batch.py).
            sends = {"authorization"} if component(monitor) in ("router", "batch") else set()
            # The engines' targets get their `backend` (tests/test_chart_engine_monitor.py).
            sends |= {"relabelings"} if component(monitor) == "engine" else set()
            assert set(endpoint) == {"port", "path", "interval", "scrapeTimeout"} | sends
            assert endpoint["path"] == "/metrics"
    engines = next(m for m in monitors if component(m) == "engine")
    assert engines["spec"]["namespaceSelector"] == {"any": True}
    assert [e["port"] for e in engines["spec"]["endpoints"]] == ["http", "babysitter"]
    assert engines["spec"]["selector"]["matchExpressions"] == [
        {"key": "llmsvc.io/inference-service", "operator": "Exists"}
    ]
    (rule,) = of_kind(all_docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule["spec"]) == {"groups"}
    groups = rule["spec"]["groups"]
    assert groups, "no alert groups"
    for group in groups:
        assert group["name"] and group["rules"]
        for item in group["rules"]:
            assert ("alert" in item) != ("record" in item) and item["expr"]


def test_service_monitors_select_the_services_they_scrape(all_docs: list[dict[str, Any]]) -> None:
    services = {component(s): s for s in of_kind(all_docs, "Service")}
    for monitor in of_kind(all_docs, "ServiceMonitor"):
        if component(monitor) == "engine":
            continue
        service = services[component(monitor)]
        selector = monitor["spec"]["selector"]["matchLabels"]
        assert selector.items() <= service["metadata"]["labels"].items()
        ports = {p["name"] for p in service["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports


def test_services_and_policies_select_their_pods(all_docs: list[dict[str, Any]]) -> None:
    pods = {
        component(d): d["spec"]["template"] for d in of_kind(all_docs, "Deployment", "StatefulSet")
    }

    def selects(selector: Mapping[str, str], name: str) -> bool:
        labels: dict[str, str] = pods[name]["metadata"]["labels"]
        return selector.items() <= labels.items()

    for service in of_kind(all_docs, "Service"):
        name = component(service)
        assert [n for n in pods if selects(service["spec"]["selector"], n)] == [name]
        ports = {p["name"] for p in pods[name]["spec"]["containers"][0]["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
    for deployment in of_kind(all_docs, "Deployment", "StatefulSet"):
        assert selects(deployment["spec"]["selector"]["matchLabels"], component(deployment))
    policies = {component(p): p["spec"] for p in of_kind(all_docs, "NetworkPolicy")}
    for name, policy in policies.items():
        assert [n for n in pods if selects(policy["podSelector"]["matchLabels"], n)] == [name]
    (registry_rule,) = policies["registry"]["ingress"]
    router_peer, monitoring_peer = registry_rule["from"]
    assert selects(router_peer["podSelector"]["matchLabels"], "router")
    assert monitoring_peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] == (
        "monitoring"
    )


def test_prometheus_rule_embeds_the_alert_rules_file(all_docs: list[dict[str, Any]]) -> None:
    (rule,) = of_kind(all_docs, "PrometheusRule")
    rules_file = yaml.safe_load((CHART / "files" / "alerts.rules.yaml").read_text())
    assert rule["spec"]["groups"] == rules_file["groups"]


def test_dashboards_become_labelled_config_maps(all_docs: list[dict[str, Any]]) -> None:
    files = sorted((CHART / "dashboards").glob("*.json"))
    assert files, "no dashboards in charts/llmsvc/dashboards/"
    maps = of_kind(all_docs, "ConfigMap")
    assert len(maps) == len(files)
    by_key = {key: (cm, text) for cm in maps for key, text in cm["data"].items()}
    for path in files:
        cm, text = by_key[path.name]
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "llmsvc"}
        assert json.loads(text) == json.loads(path.read_text())


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"router": {"strateg": "ip_hash"}}, "'strateg' not allowed"),
        ({"metrics": {"serviceMonitors": {"enabled": True}}}, "'serviceMonitors' not allowed"),
        ({"routr": {"replicas": 3}}, "'routr' not allowed"),
        ({"router": {"strategy": "fastest"}}, "strategy"),
        ({"router": {"workers": 0}}, "workers"),
        ({"watchNamespaces": ["Not_A_Namespace"]}, "watchNamespaces"),
        ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
    ],
)
def test_values_schema_rejects_mistakes(values: Mapping[str, Any], message: str) -> None:
    with pytest.raises(HelmError, match=message):
        render(values=values)


def test_api_keys_without_keys_is_a_clear_error() -> None:
    with pytest.raises(HelmError, match=r"router.apiKeys.values or router.apiKeys.existingSecret"):
        render(values={"router": {"apiKeys": {"enabled": True}}})


@pytest.mark.parametrize("which", ["default_docs", "all_docs"])
@pytest.mark.parametrize("name", ["router", "registry", "operator", "batch"])
def test_components_get_flags_and_env_their_settings_accept(
    which: str, name: str, request: pytest.FixtureRequest
) -> None:
    docs: list[dict[str, Any]] = request.getfixturevalue(which)
    settings_cls = SETTINGS[name]
    try:
        settings = component_settings(settings_cls, docs, name)
    except SystemExit as exc:  # parse_settings printed the one-line reason
        pytest.fail(f"llmsvc {name} rejects the chart's flags (exit {exc.code})")
    assert settings.model_dump()["host"] == "0.0.0.0"
    known = {env_name(field) for field in settings_cls.model_fields}
    for env in container(docs, name).get("env", []):
        if env["name"].startswith("LLMSVC_"):
            assert env["name"] in known, f"{name}: {env['name']} is no setting"


def test_default_wiring(default_docs: list[dict[str, Any]]) -> None:
    router = component_settings(RouterSettings, default_docs, "router")
    assert router.registry_url == "http://llmsvc-registry.llmsvc.svc:8081"
    assert (router.strategy, router.workers, router.port) == ("round_robin", 1, 8080)
    registry = component_settings(RegistrySettings, default_docs, "registry")
    assert (registry.source, registry.all_namespaces, registry.port) == ("kubernetes", True, 8081)
    operator = component_settings(OperatorSettings, default_docs, "operator")
    assert operator.all_namespaces and operator.port == 8090
    assert (operator.image_prefix, operator.image_tag) == ("ghcr.io/llmsvc", "0.1.0")
    assert container(default_docs, "router")["image"] == "ghcr.io/llmsvc/router:0.1.0"
    token = _env(default_docs, "registry")["LLMSVC_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token == {"name": "llmsvc-registry-token", "key": "token"}
    (secret,) = [
        s for s in of_kind(default_docs, "Secret") if s["metadata"]["name"] == token["name"]
    ]
    assert len(secret["data"]["token"]) > 40  # a random token, base64


def test_all_features_wiring(all_docs: list[dict[str, Any]]) -> None:
    router = component_settings(RouterSettings, all_docs, "router")
    assert (router.strategy, router.workers, router.retries) == ("least_load", 4, 3)
    keys = _env(all_docs, "router")["LLMSVC_API_KEYS"]["valueFrom"]["secretKeyRef"]
    assert keys == {"name": "llmsvc-router-api-keys", "key": "api-keys"}
    (secret,) = of_kind(all_docs, "Secret")
    assert secret["data"]["api-keys"] == "a2V5LW9uZSxrZXktdHdv"  # "key-one,key-two"
    token = _env(all_docs, "registry")["LLMSVC_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token == {"name": "my-registry-token", "key": "token"}
    operator = component_settings(OperatorSettings, all_docs, "operator")
    assert (operator.image_prefix, operator.image_tag) == ("registry.example.com/llmsvc", "0.1.0")
    assert operator.resync_interval == 15
    assert container(all_docs, "router")["image"] == "ghcr.io/llmsvc/router:0.1.0-test"
    (ingress,) = of_kind(all_docs, "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "llmsvc-router", "port": {"name": "http"}}
    (hpa,) = of_kind(all_docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "llmsvc-router"


def test_watched_namespaces_reach_operator_and_registry() -> None:
    docs = documents(render(values={"watchNamespaces": ["team-a", "team-b"]}))
    for name, cls in (("operator", OperatorSettings), ("registry", RegistrySettings)):
        settings = component_settings(cls, docs, name)
        values = settings.model_dump()
        assert (values["namespace"], values["all_namespaces"]) == (["team-a", "team-b"], False)


def _value_keys(values: Mapping[str, Any], prefix: str = "") -> list[str]:
    whole = {"resources", "podSecurityContext", "securityContext", "labels"}
    keys: list[str] = []
    for key, value in values.items():
        if isinstance(value, dict) and value and key not in whole:
            keys += _value_keys(value, f"{prefix}{key}.")
        else:
            keys.append(prefix + key)
    return keys


def test_every_value_is_documented() -> None:
    """docs/kubernetes.md's values table names every key (`<component>.x` for shared ones)."""
    doc = (ROOT / "docs" / "kubernetes.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = []
    for key in _value_keys(values):
        head, _, rest = key.partition(".")
        shared = head in SETTINGS and f"`<component>.{rest}`" in doc
        if f"`{key}`" not in doc and not shared:
            missing.append(key)
    assert not missing, f"undocumented values: {missing}"


def _env(docs: list[dict[str, Any]], name: str) -> dict[str, dict[str, Any]]:
    return {env["name"]: env for env in container(docs, name).get("env", [])}
