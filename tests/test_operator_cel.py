"""The CRD's CEL rules, evaluated (cel-python): they accept what ``parse_spec`` accepts
and reject the cross-field mistakes it rejects, so the API server and the operator agree.

The API server evaluates ``x-kubernetes-validations`` with ``self`` bound to the node the
rule sits on; this test does the same for every rule of the generated CRD.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml
from celpy.adapter import json_to_cel

from llmsvc.operator.crd import build_crd
from llmsvc.operator.spec import SpecError, check_name, parse_spec

SAMPLES = sorted((Path(__file__).resolve().parent.parent / "manifests" / "samples").glob("*.yaml"))


def rules() -> list[tuple[tuple[str, ...], str]]:
    """(path from the object's root, rule) for every CEL rule in the schema."""
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    found: list[tuple[tuple[str, ...], str]] = []

    def walk(node: dict[str, Any], path: tuple[str, ...]) -> None:
        found.extend((path, v["rule"]) for v in node.get("x-kubernetes-validations", []))
        for key, child in node.get("properties", {}).items():
            walk(child, (*path, key))

    walk(schema, ())
    return found


def violations(obj: dict[str, Any]) -> list[str]:
    """The rules ``obj`` breaks (a rule whose node is absent does not apply)."""
    env = celpy.Environment()
    broken = []
    for path, rule in rules():
        node: Any = obj
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            continue
        result = env.program(env.compile(rule)).evaluate({"self": json_to_cel(node)})
        # an evaluation error (a CELEvalError value) rejects the object too, as in the API server
        if not (isinstance(result, celpy.celtypes.BoolType) and bool(result)):
            broken.append(rule)
    return broken


def test_every_cross_field_rule_is_checked_here() -> None:
    assert len(rules()) == 6


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.stem)
def test_samples_break_no_rule(sample: Path) -> None:
    obj = yaml.safe_load(sample.read_text())
    assert violations(obj) == []


def base() -> dict[str, Any]:
    return {
        "metadata": {"name": "qwen"},
        "spec": {
            "model": {"name": "Qwen3-8B", "uri": "hf://Qwen/Qwen3-8B"},
            "engine": {"type": "vllm"},
        },
    }


def with_(changes: dict[str, Any], name: str = "qwen") -> dict[str, Any]:
    obj = copy.deepcopy(base())
    obj["metadata"]["name"] = name
    for dotted, value in changes.items():
        node = obj["spec"]
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return obj


ALLOWED = [
    with_({}),
    with_({"model.uri": "hf://Qwen/Qwen3-8B@main", "engine.type": "sglang"}),
    with_({"model.hfTokenSecret": {"name": "hf"}}),
    with_({"modelCache": {"pvc": "cache"}}),
    with_({"engine.type": "command", "engine.image": "example.com/engine:1"}),
    with_({"autoscaling": {"minReplicas": 0, "maxReplicas": 3}}),
    with_({"autoscaling": {"minReplicas": 4}}),
    with_({"autoscaling": {"maxReplicas": 1}}),
]
REJECTED = {
    "revision-on-llama.cpp": with_({"model.uri": "hf://org/m@v1", "engine.type": "llama.cpp"}),
    "token-without-hf": with_(
        {"model.uri": "pvc://models/m", "model.hfTokenSecret": {"name": "x"}}
    ),
    "cache-both": with_({"modelCache": {"pvc": "c", "emptyDir": {"sizeLimit": "1Gi"}}}),
    "cache-neither": with_({"modelCache": {}}),
    "command-without-image": with_({"engine.type": "command"}),
    "infinilm-empty-image": with_({"engine.type": "infinilm", "engine.image": ""}),
    "bad-name": with_({}, name="9-starts-with-a-digit"),
    "autoscaling-min-over-max": with_({"autoscaling": {"minReplicas": 3, "maxReplicas": 2}}),
    "autoscaling-min-over-default-max": with_({"autoscaling": {"minReplicas": 5}}),
}


@pytest.mark.parametrize("obj", ALLOWED)
def test_valid_specs_pass_both(obj: dict[str, Any]) -> None:
    parse_spec(obj["spec"])
    check_name(obj["metadata"]["name"])
    assert violations(obj) == []


@pytest.mark.parametrize("obj", REJECTED.values(), ids=REJECTED.keys())
def test_cross_field_mistakes_are_rejected_by_both(obj: dict[str, Any]) -> None:
    assert len(violations(obj)) == 1
    with pytest.raises(SpecError):
        _parse_whole(obj)


def _parse_whole(obj: dict[str, Any]) -> None:
    """What the operator checks of an object: its name, then its spec."""
    check_name(obj["metadata"]["name"])
    parse_spec(obj["spec"])
