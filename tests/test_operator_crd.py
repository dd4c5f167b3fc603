"""The generated InferenceService CRD: structural, valid, named as the contract says, copies equal.

The checked-in copies are written from ``crd_yaml()``; after changing
``src/llmsvc/operator/spec.py`` regenerate them with::

    .venv/bin/llmsvc operator crd > operator/crd.yaml
    cp operator/crd.yaml charts/llmsvc/crds/inferenceservices.llmsvc.io.yaml

and re-render ``manifests/install.yaml`` (``helm template --include-crds``, see
docs/kubernetes.md).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from llmsvc.operator.crd import CRD_NAME, build_crd, crd_yaml

ROOT = Path(__file__).resolve().parent.parent
COPIES = [
    ROOT / "operator" / "crd.yaml",
    ROOT / "charts" / "llmsvc" / "crds" / "inferenceservices.llmsvc.io.yaml",
]
INSTALL = ROOT / "manifests" / "install.yaml"
REGENERATE = "regenerate it: .venv/bin/llmsvc operator crd > <file> (see this test's docstring)"


def version() -> dict[str, Any]:
    only: dict[str, Any]
    (only,) = build_crd()["spec"]["versions"]
    return only


def structural_errors(node: dict[str, Any], path: str = "") -> list[str]:
    """Violations of the API server's structural-schema rules below ``node``."""
    errors = []
    free = node.get("x-kubernetes-preserve-unknown-fields") is True
    int_or_string = node.get("x-kubernetes-int-or-string") is True
    if "type" not in node and not (free or int_or_string):
        errors.append(f"{path or '/'}: no type")
    for key in ("$ref", "$defs", "title", "allOf", "oneOf", "not", "nullable", "definitions"):
        if key in node:
            errors.append(f"{path}: {key} is not allowed")
    int_or_string_options = [{"type": "integer"}, {"type": "string"}]
    if "anyOf" in node and (not int_or_string or node["anyOf"] != int_or_string_options):
        errors.append(f"{path}: anyOf outside an int-or-string")
    if node.get("additionalProperties") is False:
        errors.append(f"{path}: additionalProperties false")
    if "properties" in node and "additionalProperties" in node:
        errors.append(f"{path}: both properties and additionalProperties")
    if node.get("type") == "array" and "items" not in node:
        errors.append(f"{path}: array without items")
    for name, sub in node.get("properties", {}).items():
        errors += structural_errors(sub, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        errors += structural_errors(node["additionalProperties"], f"{path}[*]")
    if "items" in node:
        errors += structural_errors(node["items"], f"{path}[]")
    return errors


def test_schema_is_structural() -> None:
    schema = version()["schema"]["openAPIV3Schema"]
    assert structural_errors(schema) == []


def test_structural_check_can_fail() -> None:
    bad = {
        "type": "object",
        "properties": {
            "a": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "b": {"$ref": "#/$defs/B"},
            "c": {"type": "object", "additionalProperties": False},
        },
    }
    assert structural_errors(bad) == [
        ".a: no type",
        ".a: anyOf outside an int-or-string",
        ".b: no type",
        ".b: $ref is not allowed",
        ".c: additionalProperties false",
    ]


def test_crd_is_valid_kubernetes() -> None:
    kubernetes_validate.validate(build_crd(), "1.31", strict=True)


def test_names_and_version_follow_the_contract() -> None:
    crd = build_crd()
    assert crd["metadata"]["name"] == CRD_NAME == "inferenceservices.llmsvc.io"
    spec = crd["spec"]
    assert spec["group"] == "llmsvc.io"
    assert spec["scope"] == "Namespaced"
    names = spec["names"]
    assert (names["kind"], names["plural"], names["singular"]) == (
        "InferenceService",
        "inferenceservices",
        "inferenceservice",
    )
    assert names["shortNames"] == ["llmis"]
    assert names["categories"] == ["llmsvc"]
    only = version()
    assert (only["name"], only["served"], only["storage"]) == ("v1alpha1", True, True)


def test_status_and_scale_subresources() -> None:
    sub = version()["subresources"]
    assert sub["status"] == {}
    assert sub["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    props = version()["schema"]["openAPIV3Schema"]["properties"]
    assert props["spec"]["properties"]["replicas"]["type"] == "integer"
    assert props["status"]["properties"]["selector"]["type"] == "string"


def test_printer_columns() -> None:
    columns = {c["name"]: c for c in version()["additionalPrinterColumns"]}
    shown = [c["name"] for c in version()["additionalPrinterColumns"] if not c.get("priority")]
    assert shown == ["Model", "Engine", "GPUs", "Ready", "Phase", "Age"]
    assert columns["Model"]["jsonPath"] == ".spec.model.name"
    assert columns["Engine"]["jsonPath"] == ".spec.engine.type"
    assert columns["GPUs"]["jsonPath"] == ".spec.resources.gpus"
    assert columns["Ready"]["jsonPath"] == ".status.ready"
    assert columns["Phase"]["jsonPath"] == ".status.phase"
    assert columns["Age"] == {
        "name": "Age",
        "type": "date",
        "jsonPath": ".metadata.creationTimestamp",
    }
    status = version()["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert "ready" in status and "phase" in status


def test_schema_keeps_defaults_enums_bounds_and_descriptions() -> None:
    spec = version()["schema"]["openAPIV3Schema"]["properties"]["spec"]
    props = spec["properties"]
    assert spec["required"] == ["model", "engine"]
    assert props["replicas"] == {
        "type": "integer",
        "description": props["replicas"]["description"],
        "minimum": 0,
        "default": 1,
    }
    assert (props["weight"]["minimum"], props["weight"]["maximum"]) == (1, 1000)
    resources = props["resources"]
    assert resources["default"] == {}  # so that the server fills gpus etc. when it is omitted
    assert resources["properties"]["gpus"]["default"] == 1
    assert resources["properties"]["gpuResource"]["default"] == "nvidia.com/gpu"
    assert resources["properties"]["memory"]["x-kubernetes-int-or-string"] is True
    assert "vllm" in props["engine"]["properties"]["type"]["enum"]
    assert props["affinity"]["x-kubernetes-preserve-unknown-fields"] is True
    assert props["nodeSelector"]["additionalProperties"] == {"type": "string"}
    env = props["engine"]["properties"]["env"]["items"]["properties"]
    assert env["valueFrom"]["x-kubernetes-preserve-unknown-fields"] is True
    assert props["startupTimeoutSeconds"]["default"] == 1800
    assert all("description" in sub for sub in props.values())
    assert "modelCache" not in spec.get("default", {})


def test_status_schema_has_no_defaults_and_keeps_unknown_fields() -> None:
    status = version()["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert "default" not in yaml.safe_dump(status)
    assert status["x-kubernetes-preserve-unknown-fields"] is True
    phase = status["properties"]["phase"]
    assert phase["enum"] == ["Pending", "Progressing", "Ready", "Degraded", "Failed"]
    condition = status["properties"]["conditions"]["items"]
    assert set(condition["required"]) == {"type", "status", "reason", "lastTransitionTime"}


def test_name_rule_at_the_root() -> None:
    (rule,) = version()["schema"]["openAPIV3Schema"]["x-kubernetes-validations"]
    assert "self.metadata.name" in rule["rule"] and "63" in rule["rule"]


def test_yaml_round_trips_and_is_deterministic() -> None:
    text = crd_yaml()
    assert text == crd_yaml()
    assert text.startswith("# ")
    assert yaml.safe_load(text) == build_crd()


@pytest.mark.parametrize("path", COPIES, ids=lambda p: str(p.relative_to(ROOT)))
def test_checked_in_copy_equals_the_generated_crd(path: Path) -> None:
    assert path.is_file(), f"{path} is missing: {REGENERATE}"
    assert path.read_text() == crd_yaml(), f"{path} is stale: {REGENERATE}"


def test_install_manifest_carries_the_generated_crd() -> None:
    if not INSTALL.exists():
        pytest.skip("manifests/install.yaml does not exist yet")
    docs = [d for d in yaml.safe_load_all(INSTALL.read_text()) if d]
    crds = [d for d in docs if d.get("kind") == "CustomResourceDefinition"]
    assert crds, "manifests/install.yaml has no CRD: render it with helm template --include-crds"
    (ours,) = [d for d in crds if d["metadata"]["name"] == CRD_NAME]
    assert ours == build_crd(), "manifests/install.yaml's CRD is stale: re-render it"


def test_operator_crd_command_prints_it() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "llmsvc", "operator", "crd"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == crd_yaml()
