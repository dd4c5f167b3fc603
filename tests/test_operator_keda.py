"""The KEDA ScaledObject builder (``llmsvc.operator.keda``): a valid object, what KEDA reads.

Valid: the built object passes the openAPIV3Schema of KEDA's own CRD (v2.20.2, vendored in
tests/data/keda) with jsonschema, its CEL rule, and uses no field that schema does not
declare (the CRD does not forbid unknown fields, so a misspelt one would otherwise pass
here and be pruned, silently, by the API server). The Prometheus queries are evaluated by
``promtool test rules`` against made-up series: a query that is syntactically wrong, or
sums the wrong thing, fails there.
"""

from __future__ import annotations

import copy
import functools
import subprocess
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import pytest
import yaml
from celpy.adapter import json_to_cel

from llmsvc.operator.builders import Owner
from llmsvc.operator.children import patch_for
from llmsvc.operator.keda import (
    HPA_WINDOW_MAX_SECONDS,
    KEDA_API,
    build_scaled_object,
    demand_query,
    kv_cache_query,
    scaled_object_path,
    waiting_query,
)
from llmsvc.operator.paths import object_path
from llmsvc.operator.spec import InferenceServiceSpec, SpecError, parse_spec
from tools import require_tool

CRD = Path(__file__).parent / "data" / "keda" / "keda.sh_scaledobjects.yaml"
OWNER = Owner(name="qwen", namespace="team-a", uid="uid-1")
PROM = "http://prometheus-operated.monitoring.svc:9090"


@functools.cache
def crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def spec_of(autoscaling: dict[str, Any] | None, engine: str = "vllm") -> InferenceServiceSpec:
    body: dict[str, Any] = {
        "model": {"name": "Qwen3-8B", "uri": "hf://Qwen/Qwen3-8B"},
        "engine": {"type": engine},
    }
    if engine == "sim":
        body["model"]["uri"] = "sim://Qwen3-8B"
    if autoscaling is not None:
        body["autoscaling"] = autoscaling
    return parse_spec(body)


def build(autoscaling: dict[str, Any], engine: str = "vllm") -> dict[str, Any]:
    return build_scaled_object(OWNER, spec_of(autoscaling, engine), prometheus_url=PROM)


def undeclared_fields(obj: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Paths in ``obj`` that ``schema`` does not declare (where it lists properties)."""
    out: list[str] = []
    if isinstance(obj, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, value in obj.items():
            if props is not None and key in props:
                out += undeclared_fields(value, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                out += undeclared_fields(value, extra, f"{path}.{key}")
            elif (
                props is not None and schema.get("x-kubernetes-preserve-unknown-fields") is not True
            ) and path != ".metadata":  # ObjectMeta: type object, checked by the API server
                out.append(f"{path}.{key}")
    elif isinstance(obj, list) and "items" in schema:
        for i, item in enumerate(obj):
            out += undeclared_fields(item, schema["items"], f"{path}[{i}]")
    return out


def cel_violations(obj: dict[str, Any]) -> list[str]:
    """The CRD's x-kubernetes-validations on spec that ``obj`` breaks."""
    rules = crd_schema()["properties"]["spec"].get("x-kubernetes-validations", [])
    env = celpy.Environment()
    broken = []
    for rule in rules:
        program = env.program(env.compile(rule["rule"]))
        if not bool(program.evaluate({"self": json_to_cel(obj["spec"])})):
            broken.append(rule["message"])
    return broken


CASES: dict[str, dict[str, Any]] = {
    "to zero": {"minReplicas": 0, "maxReplicas": 3},
    "defaults": {},
    "kv cache": {"metric": "kvCache", "targetKvCache": 0.7, "minReplicas": 0},
    "slow": {"minReplicas": 2, "maxReplicas": 9, "scaleUpDelay": "30s", "scaleDownDelay": "2h"},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_kedas_crd_schema(case: str) -> None:
    obj = build(CASES[case])
    jsonschema.validate(obj, crd_schema())
    assert undeclared_fields(obj, crd_schema()) == []
    assert cel_violations(obj) == []


def test_the_schema_check_catches_a_misspelt_field() -> None:
    obj = build({})
    obj["spec"]["minReplicas"] = 0  # KEDA's name is minReplicaCount
    obj["spec"]["triggers"][0]["metadata"]["threshold"] = 8  # metadata values are strings
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(obj, crd_schema())
    del obj["spec"]["triggers"][0]["metadata"]["threshold"]
    assert undeclared_fields(obj, crd_schema()) == [".spec.minReplicas"]


def test_min_above_max_breaks_kedas_rule() -> None:
    obj = build({})
    obj["spec"]["minReplicaCount"] = 5
    assert cel_violations(obj) == ["minReplicaCount must be less than or equal to maxReplicaCount"]


def test_owner_target_and_bounds() -> None:
    obj = build({"minReplicas": 0, "maxReplicas": 3, "targetRequests": 5})
    assert obj["apiVersion"] == KEDA_API == "keda.sh/v1alpha1"
    assert obj["metadata"]["name"] == "qwen" and obj["metadata"]["namespace"] == "team-a"
    (ref,) = obj["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
        "InferenceService",
        "qwen",
        "uid-1",
        True,
    )
    spec = obj["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "qwen"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (0, 3)
    # Scale to zero needs only minReplicaCount 0: idleReplicaCount is for an idle count
    # below a non-zero minimum.
    assert "idleReplicaCount" not in spec
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert trigger["metadata"] == {
        "serverAddress": PROM,
        "query": 'sum(llmsvc_router_model_demand{model_name="Qwen3-8B"})',
        "threshold": "5",
        "activationThreshold": "0",
        "ignoreNullValues": "true",
    }


def test_delays_become_cooldown_and_hpa_windows() -> None:
    spec = build({"scaleUpDelay": "30s", "scaleDownDelay": "10m"})["spec"]
    assert spec["cooldownPeriod"] == 600
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 30
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 600
    # The HPA allows at most an hour; the cooldown (KEDA's own) has no such limit.
    long = build({"scaleDownDelay": "2h"})["spec"]
    window = long["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert window["stabilizationWindowSeconds"] == HPA_WINDOW_MAX_SECONDS
    assert long["cooldownPeriod"] == 7200


def test_kv_cache_metric_uses_the_engines_gauge_and_a_wake_trigger() -> None:
    kv, waiting = build({"metric": "kvCache", "targetKvCache": 0.7})["spec"]["triggers"]
    assert kv["metricType"] == "Value" and kv["metadata"]["threshold"] == "0.7"
    assert "vllm:kv_cache_usage_perc" in kv["metadata"]["query"]
    assert waiting["metricType"] == "AverageValue"
    assert float(waiting["metadata"]["threshold"]) >= 1000  # asks for one replica, no more
    sglang = build({"metric": "kvCache"}, engine="sglang")["spec"]["triggers"][0]
    assert "sglang:token_usage" in sglang["metadata"]["query"]


def test_no_autoscaling_or_unknown_kv_metric_is_a_spec_error() -> None:
    with pytest.raises(SpecError):
        build_scaled_object(OWNER, spec_of(None), prometheus_url=PROM)
    with pytest.raises(SpecError, match="kvCache"):
        kv_cache_query(OWNER, "custom-engine")


def test_paths() -> None:
    assert scaled_object_path("ns", "m") == "/apis/keda.sh/v1alpha1/namespaces/ns/scaledobjects/m"
    assert scaled_object_path("ns") == "/apis/keda.sh/v1alpha1/namespaces/ns/scaledobjects"
    # children.apply finds the object's path through paths.object_path.
    assert object_path(build({})) == scaled_object_path("team-a", "qwen")


def test_model_names_are_quoted_for_promql() -> None:
    assert demand_query('a"b\\c') == 'sum(llmsvc_router_model_demand{model_name="a\\"b\\\\c"})'


# --- the queries, evaluated by promtool ----------------------------------------------------


def promql_cases(tmp_path: Path, cases: list[dict[str, Any]], series: list[dict[str, str]]) -> str:
    test = {
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": cases}],
    }
    path = tmp_path / "keda_queries_test.yaml"
    path.write_text(yaml.safe_dump(test))
    done = subprocess.run(
        [require_tool("promtool"), "test", "rules", path.name],
        capture_output=True, text=True, check=False, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_queries_evaluate_as_keda_needs(tmp_path: Path) -> None:
    model = 'Qwen3-8B "chat"'
    label = 'model_name="Qwen3-8B \\"chat\\""'
    series = [
        # Two routers' demand for the model, one for another model.
        {"series": f"llmsvc_router_model_demand{{{label}, instance='r1'}}", "values": "3"},
        {"series": f"llmsvc_router_model_demand{{{label}, instance='r2'}}", "values": "4"},
        {"series": 'llmsvc_router_model_demand{model_name="other", instance="r1"}', "values": "50"},
        {"series": f"llmsvc_router_held_requests{{{label}, instance='r1'}}", "values": "2"},
        {
            "series": f"llmsvc_router_queue_requests{{{label}, priority='p', instance='r2'}}",
            "values": "1",
        },
        {
            "series": 'vllm:kv_cache_usage_perc{namespace="team-a", service="qwen", pod="a"}',
            "values": "0.2",
        },
        {
            "series": 'vllm:kv_cache_usage_perc{namespace="team-a", service="qwen", pod="b"}',
            "values": "0.6",
        },
        {
            "series": 'vllm:kv_cache_usage_perc{namespace="team-b", service="qwen", pod="c"}',
            "values": "1",
        },
    ]
    cases = [
        {
            "expr": demand_query(model),
            "eval_time": "0m",
            "exp_samples": [{"labels": "{}", "value": 7}],
        },
        {
            "expr": waiting_query(model),
            "eval_time": "0m",
            "exp_samples": [{"labels": "{}", "value": 3}],
        },
        # No held or queued series at all (a router that never saw the model): 0, not empty.
        {
            "expr": waiting_query("idle"),
            "eval_time": "0m",
            "exp_samples": [{"labels": "{}", "value": 0}],
        },
        {
            "expr": kv_cache_query(OWNER, "vllm"),
            "eval_time": "0m",
            "exp_samples": [{"labels": "{}", "value": 0.4}],
        },
    ]
    assert "SUCCESS" in promql_cases(tmp_path, cases, series)


def test_an_unchanged_scaled_object_is_not_patched_and_a_changed_one_is() -> None:
    """children.apply patches only what changed: KEDA's status and the server's metadata
    on the live object are not a reason to patch it each round."""
    desired = build({"minReplicas": 0, "maxReplicas": 3})
    live = copy.deepcopy(desired)
    live["metadata"].update(uid="so-1", resourceVersion="42", generation=1)
    live["status"] = {"scaleTargetKind": "apps/v1.Deployment", "conditions": []}
    assert patch_for(live, desired) is None
    bigger = build({"minReplicas": 0, "maxReplicas": 5})
    patch = patch_for(live, bigger)
    assert patch is not None and patch["spec"]["maxReplicaCount"] == 5
