"""charts/llmsvc's autoscaling values: the operator's flags, token mount and RBAC per engine.

``autoscaling.engine`` is ``builtin`` (the operator asks the routers for ``GET /demand`` and
patches the Deployments' scale subresource), ``keda`` (the operator keeps KEDA ScaledObjects)
or ``none``. Real ``helm template`` renders, parsed by the operator's own settings class and
checked with ``kubernetes-validate --strict``: the chart can only pass flags the operator
takes, and each engine gets the permissions it uses and no other.
"""

from __future__ import annotations

import base64
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from helmchart import (
    HelmError,
    component,
    component_args,
    container,
    documents,
    notes,
    of_kind,
    pod_specs,
    render,
    validate_strict,
)
from llmsvc.core.settings import parse_settings
from llmsvc.operator.settings import OperatorSettings
from llmsvc.operator.spec import parse_spec
from tools import ROOT, require_tool

K8S_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
ENGINES = ("builtin", "keda", "none")
TOKEN_DIR = "/var/run/llmsvc/router-admin-token"
Rules = dict[tuple[str, str], set[str]]


def docs_for(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return documents(render(values=values))


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {engine: docs_for({"autoscaling": {"engine": engine}}) for engine in ENGINES}


def settings_of(docs: Sequence[dict[str, Any]], tmp_path: Path) -> OperatorSettings:
    """The operator's settings from the chart's flags, its mounted token file made real."""
    args = component_args(docs, "operator")
    if "--router-admin-token-file" in args:
        at = args.index("--router-admin-token-file") + 1
        assert args[at] == f"{TOKEN_DIR}/token"
        secrets = {s["metadata"]["name"]: s["data"] for s in of_kind(docs, "Secret")}
        (volume,) = [v for v in pod_spec(docs)["volumes"] if v["name"] == "router-admin-token"]
        (item,) = volume["secret"]["items"]
        token = base64.b64decode(secrets[volume["secret"]["secretName"]][item["key"]])
        (tmp_path / item["path"]).write_bytes(token)
        args[at] = str(tmp_path / item["path"])
    return parse_settings(OperatorSettings, args, prog="llmsvc operator")


def pod_spec(docs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    (spec,) = [s for k, s in pod_specs(docs).items() if k.endswith("llmsvc-operator")]
    return spec


def operator_rules(docs: Sequence[dict[str, Any]]) -> dict[str, Rules]:
    """Verbs per (apiGroup, resource) of each operator Role/ClusterRole, by its name."""
    out: dict[str, Rules] = {}
    for role in of_kind(docs, "Role", "ClusterRole"):
        if component(role) != "operator":
            continue
        rules: Rules = {}
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    rules.setdefault((group, resource), set()).update(rule["verbs"])
        out[
            f"{role['kind']}/{role['metadata'].get('namespace', '')}/{role['metadata']['name']}"
        ] = rules
    return out


def test_builtin_asks_this_releases_routers_with_their_admin_token(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    docs = rendered["builtin"]
    settings = settings_of(docs, tmp_path)
    assert settings.autoscaler == "builtin"
    assert settings.router_service == "llmsvc/llmsvc-router"
    assert (settings.autoscale_interval, settings.router_timeout) == (2, 1)
    # The Service it names exists and has the port the operator looks for.
    (service,) = [s for s in of_kind(docs, "Service") if s["metadata"]["name"] == "llmsvc-router"]
    assert settings.router_port_name in [p["name"] for p in service["spec"]["ports"]]
    # The token is the router's own: the Secret (and key) the router's env reads.
    assert settings.router_admin_token is not None
    router_env = {e["name"]: e for e in container(docs, "router")["env"]}
    ref = router_env["LLMSVC_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]
    secrets = {s["metadata"]["name"]: s["data"] for s in of_kind(docs, "Secret")}
    expected = base64.b64decode(secrets[ref["name"]][ref["key"]]).decode()
    assert settings.router_admin_token.get_secret_value() == expected
    mounts = {m["name"]: m for m in container(docs, "operator")["volumeMounts"]}
    assert mounts["router-admin-token"] == {
        "name": "router-admin-token",
        "mountPath": TOKEN_DIR,
        "readOnly": True,
    }


def test_builtin_with_an_existing_router_secret_and_without_a_token(tmp_path: Path) -> None:
    docs = docs_for({"router": {"adminToken": {"existingSecret": "mine", "key": "k"}}})
    (volume,) = [v for v in pod_spec(docs)["volumes"] if v["name"] == "router-admin-token"]
    assert volume["secret"] == {"secretName": "mine", "items": [{"key": "k", "path": "token"}]}
    open_router = docs_for({"router": {"adminToken": {"enabled": False}}})
    settings = settings_of(open_router, tmp_path)
    assert settings.router_service == "llmsvc/llmsvc-router"
    assert settings.router_admin_token is None
    assert "router-admin-token" not in [v["name"] for v in pod_spec(open_router)["volumes"]]


def test_builtin_without_the_router_has_no_router_to_ask(tmp_path: Path) -> None:
    docs = docs_for({"router": {"enabled": False}})
    settings = settings_of(docs, tmp_path)
    assert settings.autoscaler == "builtin" and settings.router_service is None
    assert not [r for r in operator_rules(docs) if r.endswith("-routers")]


def test_keda_and_none_get_their_flags_only(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    keda = settings_of(rendered["keda"], tmp_path)
    assert keda.autoscaler == "keda"
    assert keda.keda_prometheus_url == "http://prometheus-operated.monitoring.svc:9090"
    assert keda.router_service is None and keda.router_admin_token is None
    url = "http://prometheus.mon.svc:9090"
    custom = docs_for({"autoscaling": {"engine": "keda", "keda": {"prometheusUrl": url}}})
    assert settings_of(custom, tmp_path).keda_prometheus_url == url
    none = settings_of(rendered["none"], tmp_path)
    assert none.autoscaler == "none" and none.router_service is None
    for engine in ("keda", "none"):
        args = component_args(rendered[engine], "operator")
        assert "--router-admin-token-file" not in args and "--autoscale-interval" not in args
        assert "router-admin-token" not in [
            v["name"] for v in pod_spec(rendered[engine])["volumes"]
        ]


def test_rbac_per_engine(rendered: dict[str, list[dict[str, Any]]]) -> None:
    scale = ("apps", "deployments/scale")
    keda = ("keda.sh", "scaledobjects")
    slices = ("discovery.k8s.io", "endpointslices")
    builtin = operator_rules(rendered["builtin"])
    assert builtin["ClusterRole//llmsvc-operator"][scale] == {"patch"}
    assert keda not in builtin["ClusterRole//llmsvc-operator"]
    # EndpointSlices of the routers' namespace only, never cluster-wide.
    assert builtin["Role/llmsvc/llmsvc-operator-routers"] == {slices: {"list"}}
    assert slices not in builtin["ClusterRole//llmsvc-operator"]
    (binding,) = [
        b for b in of_kind(rendered["builtin"], "RoleBinding")
        if b["metadata"]["name"] == "llmsvc-operator-routers"
    ]  # fmt: skip
    assert binding["roleRef"]["name"] == "llmsvc-operator-routers"
    assert binding["subjects"][0]["name"] == pod_spec(rendered["builtin"])["serviceAccountName"]

    with_keda = operator_rules(rendered["keda"])
    assert list(with_keda) == ["ClusterRole//llmsvc-operator"]
    assert with_keda["ClusterRole//llmsvc-operator"][keda] == {
        "get", "list", "create", "patch", "delete"
    }  # fmt: skip
    assert scale not in with_keda["ClusterRole//llmsvc-operator"]

    with_none = operator_rules(rendered["none"])["ClusterRole//llmsvc-operator"]
    assert scale not in with_none and keda not in with_none


def test_watched_namespaces_get_the_scale_rule_and_the_routers_role_stays_home() -> None:
    docs = docs_for({"watchNamespaces": ["team-a"]})
    rules = operator_rules(docs)
    assert rules["Role/team-a/llmsvc-operator"][("apps", "deployments/scale")] == {"patch"}
    assert ("discovery.k8s.io", "endpointslices") in rules["Role/llmsvc/llmsvc-operator-routers"]


def test_network_policy_lets_the_operator_reach_restricted_routers() -> None:
    peer = {"namespaceSelector": {"matchLabels": {"team": "web"}}}
    values: dict[str, Any] = {"networkPolicy": {"enabled": True, "routerFrom": [peer]}}
    docs = docs_for(values)
    (policy,) = [p for p in of_kind(docs, "NetworkPolicy") if component(p) == "router"]
    (rule,) = policy["spec"]["ingress"]
    operator_labels = of_kind(docs, "Deployment")
    (operator,) = [d for d in operator_labels if component(d) == "operator"]
    pod_labels = operator["spec"]["template"]["metadata"]["labels"]
    selectors = [p["podSelector"]["matchLabels"] for p in rule["from"] if "podSelector" in p]
    assert peer in rule["from"]
    assert any(all(pod_labels.get(k) == v for k, v in sel.items()) for sel in selectors)
    # Without routerFrom everyone may connect already; with keda nobody needs to (nor the
    # batch service, off here: its own peer is test_chart_batch's).
    values |= {"autoscaling": {"engine": "keda"}, "batch": {"enabled": False}}
    (keda_policy,) = [
        p for p in of_kind(docs_for(values), "NetworkPolicy") if component(p) == "router"
    ]
    assert keda_policy["spec"]["ingress"][0]["from"] == [peer]


@pytest.mark.parametrize("engine", ENGINES)
def test_each_engine_renders_valid_kubernetes(
    engine: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    checked = 0
    for doc in rendered[engine]:
        for version in K8S_VERSIONS:
            validate_strict(doc, version)
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize(
    "values",
    [
        {"autoscaling": {"engine": "hpa"}},
        {"autoscaling": {"interval": 0}},
        {"autoscaling": {"keda": {"prometheusURL": "http://x"}}},
    ],
)
def test_values_schema_rejects_autoscaling_mistakes(values: dict[str, Any]) -> None:
    with pytest.raises(HelmError, match="values don't meet the specifications of the schema"):
        render(values=values)


# --- deploy/hpa: the HPA + prometheus-adapter recipe (autoscaling.engine: none) -------------

HPA_DIR = ROOT / "deploy" / "hpa"
# prometheus-adapter's DiscoveryRule fields (pkg/config/config.go, v0.12.0).
ADAPTER_RULE_FIELDS = {"seriesQuery", "seriesFilters", "resources", "name", "metricsQuery"}


def recipe() -> tuple[dict[str, Any], dict[str, Any]]:
    """The recipe's HPA and InferenceService."""
    docs = documents((HPA_DIR / "hpa.yaml").read_text())
    (hpa,) = of_kind(docs, "HorizontalPodAutoscaler")
    (isvc,) = of_kind(docs, "InferenceService")
    return hpa, isvc


def test_hpa_recipe_is_valid_and_agrees_with_its_inference_service() -> None:
    hpa, isvc = recipe()
    for version in K8S_VERSIONS:
        validate_strict(hpa, version)
    spec = parse_spec(isvc["spec"])
    assert spec.autoscaling is not None
    assert hpa["metadata"]["namespace"] == isvc["metadata"]["namespace"]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": isvc["metadata"]["name"]
    }  # fmt: skip
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (
        spec.autoscaling.min_replicas, spec.autoscaling.max_replicas)  # fmt: skip
    assert hpa["spec"]["minReplicas"] >= 1, "no HPA scales to 0 without HPAScaleToZero"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["external"]["metric"] == {
        "name": "llmsvc_router_model_demand",
        "selector": {"matchLabels": {"model_name": spec.model.name}},
    }
    assert metric["external"]["target"] == {
        "type": "AverageValue", "averageValue": str(spec.autoscaling.target_requests)
    }  # fmt: skip
    behavior = hpa["spec"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == (
        spec.autoscaling.scale_down_seconds)  # fmt: skip


def test_prometheus_adapter_rule_exposes_the_demand_metric_the_hpa_asks_for(
    tmp_path: Path,
) -> None:
    values = yaml.safe_load((HPA_DIR / "prometheus-adapter-values.yaml").read_text())
    assert values["rules"]["default"] is False
    (rule,) = values["rules"]["external"]
    assert set(rule) <= ADAPTER_RULE_FIELDS
    assert rule["resources"] == {"namespaced": False}, "routers and engines differ in namespace"
    hpa, _ = recipe()
    wanted = hpa["spec"]["metrics"][0]["external"]["metric"]
    series = re.sub(r"\{.*", "", rule["seriesQuery"])
    assert re.fullmatch(rule["name"]["matches"], series)
    assert re.sub(rule["name"]["matches"], rule["name"]["as"], series) == wanted["name"]
    # The query the adapter sends for the HPA's selector sums the model's demand over every
    # router (promtool evaluates it against two routers' series).
    (model,) = wanted["selector"]["matchLabels"].values()
    query = rule["metricsQuery"].replace("<<.Series>>", series)
    query = query.replace("<<.LabelMatchers>>", f'model_name="{model}"')
    test = {
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": f'{series}{{model_name="{model}", instance="r1"}}', "values": "3"},
                {"series": f'{series}{{model_name="{model}", instance="r2"}}', "values": "6"},
                {"series": f'{series}{{model_name="other", instance="r1"}}', "values": "40"},
            ],
            "promql_expr_test": [{"expr": query, "eval_time": "0m", "exp_samples": [
                {"labels": f'{{model_name="{model}"}}', "value": 9}]}],
        }],
    }  # fmt: skip
    (tmp_path / "adapter_test.yaml").write_text(yaml.safe_dump(test))
    done = subprocess.run(
        [require_tool("promtool"), "test", "rules", "adapter_test.yaml"],
        capture_output=True, text=True, check=False, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("engine", "said"),
    [
        ("builtin", "scaled by the operator, from the routers' demand"),
        ("keda", "a KEDA ScaledObject each (KEDA must be installed"),
        ("none", "Nothing scales those with spec.autoscaling"),
    ],
)
def test_notes_say_who_scales(engine: str, said: str) -> None:
    assert said in notes("--set", f"autoscaling.engine={engine}")
