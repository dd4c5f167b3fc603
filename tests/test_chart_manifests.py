"""manifests/: install.yaml equals a fresh render of the chart (CRD included), and every
sample InferenceService is valid for the API server (the CRD's openAPIV3Schema, checked with
jsonschema; its CEL rules are the twins of parse_spec's rules) and for the operator
(parse_spec, check_name)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from helmchart import CHART, INSTALL_ARGS, documents, notes, render
from llmsvc.operator.crd import build_crd
from llmsvc.operator.spec import API_VERSION, KIND, check_name, parse_spec
from tools import ROOT

SAMPLES = sorted((ROOT / "manifests" / "samples").glob("*.yaml"))


def test_install_yaml_equals_a_fresh_render() -> None:
    checked_in = (ROOT / "manifests" / "install.yaml").read_text()
    assert checked_in == render(*INSTALL_ARGS), (
        "manifests/install.yaml is stale: run `make manifests`"
    )
    kinds = [d["kind"] for d in documents(checked_in)]
    assert kinds[0] == "CustomResourceDefinition" and kinds.count("CustomResourceDefinition") == 1
    assert "Secret" not in kinds, "a published file must not carry a token"


def test_the_chart_ships_the_generated_crd() -> None:
    (crd_file,) = (CHART / "crds").glob("*.yaml")
    assert yaml.safe_load(crd_file.read_text()) == build_crd()


@pytest.fixture(scope="module")
def crd_schema() -> dict[str, Any]:
    (version,) = build_crd()["spec"]["versions"]
    schema: dict[str, Any] = strict(version["schema"]["openAPIV3Schema"])
    return schema


def strict(node: Any) -> Any:
    """The schema as the API server applies it with strict field validation (kubectl's
    default): unknown fields are errors, except under x-kubernetes-preserve-unknown-fields."""
    if isinstance(node, list):
        return [strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: strict(value) for key, value in node.items()}
    if "properties" in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("additionalProperties", False)
    return out


def test_there_are_sim_vllm_and_llamacpp_samples() -> None:
    engines = {yaml.safe_load(p.read_text())["spec"]["engine"]["type"] for p in SAMPLES}
    assert engines == {"sim", "vllm", "llama.cpp"}


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_sample_is_valid(path: Path, crd_schema: dict[str, Any]) -> None:
    obj = yaml.safe_load(path.read_text())
    assert (obj["apiVersion"], obj["kind"]) == (API_VERSION, KIND)
    jsonschema.validate(obj, crd_schema)
    check_name(obj["metadata"]["name"])
    spec = parse_spec(obj["spec"])
    if spec.engine.type == "vllm":
        assert spec.resources.gpus == 4
        assert spec.engine.args[:2] == ["--tensor-parallel-size", "4"]
    else:
        assert spec.resources.gpus == 0


def test_the_schema_check_can_fail(crd_schema: dict[str, Any]) -> None:
    obj = yaml.safe_load((ROOT / "manifests" / "samples" / "sim.yaml").read_text())
    obj["spec"]["resources"]["gpu"] = 1
    with pytest.raises(jsonschema.ValidationError, match="'gpu' was unexpected"):
        jsonschema.validate(obj, crd_schema)


@pytest.mark.parametrize(
    ("args", "apply"),
    [
        ((), "kubectl apply -f -"),
        (("--set", "watchNamespaces={team-a}"), "kubectl apply -n team-a -f -"),
    ],
)
def test_notes_apply_a_valid_sample(
    args: tuple[str, ...], apply: str, crd_schema: dict[str, Any]
) -> None:
    text = notes(*args)
    assert apply in text
    assert "kubectl port-forward -n llmsvc svc/llmsvc-router 8080:8080" in text
    heredoc = text.split("<<'YAML'\n", 1)[1].split("\n  YAML\n", 1)[0]
    obj = yaml.safe_load(heredoc)
    jsonschema.validate(obj, crd_schema)
    assert parse_spec(obj["spec"]).model.name == "sim-model"
