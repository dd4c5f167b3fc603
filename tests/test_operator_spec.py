"""parse_spec: defaults, every rule with the field named in the message, and the CRD's twin rules.

Each cross-field rule is enforced twice: by pydantic (the operator) and by a CEL
rule in the generated CRD (the API server). The table below shows each one
rejected by parse_spec and finds its CEL rule at the right place in the schema.
Field-level limits (minimum, enum, pattern) are checked against the CRD's schema
with jsonschema, so the two can't drift apart either.
"""

from __future__ import annotations

import copy
import itertools
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from llmsvc.operator.crd import build_crd
from llmsvc.operator.modeluri import URI_PATTERN, parse_model_uri
from llmsvc.operator.spec import (
    IMAGE_RULE,
    REVISION_RULE,
    InferenceServiceSpec,
    SpecError,
    check_name,
    parse_spec,
)

ROOT = Path(__file__).resolve().parent.parent
MINIMAL: dict[str, Any] = {
    "model": {"name": "Qwen3-32B", "uri": "hf://Qwen/Qwen3-32B"},
    "engine": {"type": "vllm"},
}


def with_(path: str, value: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """A copy of ``base`` (MINIMAL) with ``value`` at dotted ``path``."""
    spec = copy.deepcopy(base or MINIMAL)
    node = spec
    *parents, last = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return spec


def spec_schema() -> dict[str, Any]:
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec: dict[str, Any] = _jsonschema(schema["properties"]["spec"])
    return spec


def _jsonschema(node: Any) -> Any:
    """The CRD schema as plain JSON Schema: int-or-string's pattern applies to strings only."""
    if isinstance(node, dict):
        out = {k: _jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
        if node.get("x-kubernetes-int-or-string"):
            pattern = out.pop("pattern", None)
            out["anyOf"] = [{"type": "integer"}, {"type": "string", "pattern": pattern}]
        elif (
            out.get("type") == "object"
            and "properties" in out
            and "additionalProperties" not in out
        ):
            out["additionalProperties"] = False  # the API server prunes (strict: rejects) them
        return out
    if isinstance(node, list):
        return [_jsonschema(v) for v in node]
    return node


def schema_accepts(spec: dict[str, Any]) -> bool:
    return jsonschema.Draft7Validator(spec_schema()).is_valid(spec)


def test_minimal_spec_gets_the_documented_defaults() -> None:
    spec = parse_spec(MINIMAL)
    assert spec.replicas == 1
    assert spec.weight == 1
    assert spec.resources.gpus == 1
    assert spec.resources.gpu_resource == "nvidia.com/gpu"
    assert spec.resources.shm == "8Gi"
    assert spec.resources.cpu is None and spec.resources.memory is None
    assert spec.startup_timeout_seconds == 1800
    assert spec.drain_timeout_seconds == 30
    assert spec.engine.image == "" and spec.engine.args == []
    assert spec.model_cache is None and spec.model.hf_token_secret is None
    assert schema_accepts(MINIMAL)


def test_contract_example_parses_with_camel_case_names() -> None:
    spec = parse_spec(
        {
            **MINIMAL,
            "engine": {"type": "vllm", "image": "", "args": [], "env": []},
            "replicas": 2,
            "resources": {"gpus": 4, "gpuResource": "nvidia.com/gpu", "cpu": "8", "memory": "64Gi"},
            "nodeSelector": {},
            "tolerations": [],
            "weight": 1,
        }
    )
    assert (spec.replicas, spec.resources.gpus, spec.resources.memory) == (2, 4, "64Gi")


def test_quantities_accept_integers_and_keep_strings() -> None:
    spec = parse_spec(with_("resources", {"cpu": 8, "memory": "64Gi", "shm": "512Mi"}))
    assert (spec.resources.cpu, spec.resources.memory, spec.resources.shm) == ("8", "64Gi", "512Mi")


def test_env_entries_are_kept_verbatim() -> None:
    value_from = {"secretKeyRef": {"name": "s", "key": "k", "optional": True}}
    spec = parse_spec(
        with_("engine.env", [{"name": "A", "value": "1"}, {"name": "B", "valueFrom": value_from}])
    )
    assert spec.engine.env[1].value_from == value_from


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"engine": {"type": "vllm"}}, "spec.model", "is required"),
        (with_("model.name", ""), "spec.model.name", "must not be empty"),
        (with_("model.uri", "s3://bucket/model"), "spec.model.uri", "unsupported scheme"),
        (with_("model.uri", "hf://just-a-name"), "spec.model.uri", "hf://org/name"),
        (with_("model.uri", "pvc://Bad_Claim/x"), "spec.model.uri", "pvc://claim"),
        (with_("engine.type", "tgi"), "spec.engine.type", "must be one of"),
        (with_("engine.imagePullPolicy", "Sometimes"), "spec.engine.imagePullPolicy", "one of"),
        (with_("engine.args", ["--x", 4]), "spec.engine.args[1]", "must be a string"),
        (with_("engine.env", [{"name": "A=B"}]), "spec.engine.env[0].name", "must match"),
        (with_("engine.env", [{"value": "x"}]), "spec.engine.env[0].name", "is required"),
        (with_("replicas", -1), "spec.replicas", "must be >= 0"),
        (with_("replicas", "2"), "spec.replicas", "must be an integer"),
        (with_("weight", 0), "spec.weight", "must be >= 1"),
        (with_("weight", 1001), "spec.weight", "must be <= 1000"),
        (with_("resources.gpus", -1), "spec.resources.gpus", "must be >= 0"),
        (with_("resources.gpuResource", "gpu"), "spec.resources.gpuResource", "must match"),
        (with_("resources.memory", "64GB"), "spec.resources.memory", "not a Kubernetes quantity"),
        (with_("resources.shm", True), "spec.resources.shm", "must be a string"),
        (with_("startupTimeoutSeconds", 5), "spec.startupTimeoutSeconds", "must be >= 10"),
        (with_("drainTimeoutSeconds", -1), "spec.drainTimeoutSeconds", "must be >= 0"),
        (with_("nodeSelector", {"gpu": 1}), "spec.nodeSelector.gpu", "must be a string"),
        (with_("tolerations", ["gpu"]), "spec.tolerations[0]", "must be an object"),
        (with_("imagePullSecrets", [{"name": "Bad Name"}]), "spec.imagePullSecrets[0].name", ""),
        (with_("gpus", 4), "spec.gpus", "unknown field"),
        (with_("resources.gpu", 4), "spec.resources.gpu", "unknown field"),
    ],
)
def test_field_rules_name_the_field(spec: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(spec)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
    assert words in str(caught.value)
    assert not schema_accepts(spec), "the CRD's schema must reject it too"


def test_spec_that_is_not_an_object_is_rejected() -> None:
    with pytest.raises(SpecError, match=r"^spec: must be an object"):
        parse_spec(["not", "a", "mapping"])  # type: ignore[arg-type]  # the wrong type on purpose


# Cross-field rules: (spec, field in the error, words, JSON path of the CRD node, CEL rule text)
CROSS_FIELD = [
    pytest.param(
        with_("engine", {"type": engine}),
        "spec.engine.image",
        f"is required for engine type {engine}",
        ["engine"],
        IMAGE_RULE,
        id=f"image-required-{engine}",
    )
    for engine in ("infinilm", "infinilm-rust", "command")
] + [
    pytest.param(
        with_("modelCache", {}),
        "spec.modelCache",
        "exactly one of pvc and emptyDir",
        ["modelCache"],
        "has(self.pvc) != has(self.emptyDir)",
        id="cache-neither",
    ),
    pytest.param(
        with_("modelCache", {"pvc": "cache", "emptyDir": {}}),
        "spec.modelCache",
        "exactly one of pvc and emptyDir",
        ["modelCache"],
        "has(self.pvc) != has(self.emptyDir)",
        id="cache-both",
    ),
    pytest.param(
        with_("model", {"name": "m", "uri": "/models/m", "hfTokenSecret": {"name": "hf"}}),
        "spec.model.hfTokenSecret",
        "only used with an hf:// uri",
        ["model"],
        "!has(self.hfTokenSecret) || self.uri.startsWith('hf://')",
        id="hf-secret-without-hf",
    ),
    pytest.param(
        with_("engine.type", "llama.cpp", with_("model.uri", "hf://org/model@v1")),
        "spec.model.uri",
        "@revision is supported only by the vllm and sglang engines",
        [],
        REVISION_RULE,
        id="revision-engine",
    ),
]


@pytest.mark.parametrize(("spec", "field", "words", "node", "rule"), CROSS_FIELD)
def test_cross_field_rules_are_enforced_by_both(
    spec: dict[str, Any], field: str, words: str, node: list[str], rule: str
) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(spec)
    assert caught.value.field == field
    assert words in str(caught.value)
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for key in node:
        schema = schema["properties"][key]
    rules = [r["rule"] for r in schema["x-kubernetes-validations"]]
    assert rule in rules
    assert all(r["message"] for r in schema["x-kubernetes-validations"])


def test_cross_field_rules_allow_the_valid_forms() -> None:
    for engine in ("infinilm", "infinilm-rust", "command"):
        parse_spec(with_("engine", {"type": engine, "image": "example.com/e:1"}))
    parse_spec(with_("modelCache", {"pvc": "cache"}))
    parse_spec(with_("modelCache", {"emptyDir": {"sizeLimit": "100Gi"}}))
    parse_spec(with_("model.hfTokenSecret", {"name": "hf-token"}))
    for engine in ("vllm", "sglang"):
        parse_spec(with_("engine.type", engine, with_("model.uri", "hf://org/model@v1")))


def test_uri_pattern_in_the_crd_accepts_exactly_what_parse_model_uri_accepts() -> None:
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    uri = schema["properties"]["spec"]["properties"]["model"]["properties"]["uri"]
    assert uri["pattern"] == URI_PATTERN
    pattern = re.compile(URI_PATTERN)
    pieces = ["hf://", "pvc://", "org", "/", ":", "@", "v1", "Bad_", "..", "s3://", "x.gguf"]
    for parts in itertools.product(pieces, repeat=3):
        candidate = "".join(parts)
        try:
            parse_model_uri(candidate)
            accepted = True
        except ValueError:
            accepted = False
        assert accepted == bool(pattern.match(candidate)), candidate


@pytest.mark.parametrize(
    ("uri", "scheme", "model", "revision", "claim"),
    [
        ("hf://Qwen/Qwen3-32B", "hf", "Qwen/Qwen3-32B", "", ""),
        (
            "hf://meta-llama/Llama-3.1-8B@refs/pr/1",
            "hf",
            "meta-llama/Llama-3.1-8B",
            "refs/pr/1",
            "",
        ),
        ("pvc://models", "pvc", "/models/models", "", "models"),
        ("pvc://models/qwen/Qwen3-8B/", "pvc", "/models/models/qwen/Qwen3-8B", "", "models"),
        ("/opt/model.gguf", "path", "/opt/model.gguf", "", ""),
        ("Qwen/Qwen3-0.6B", "path", "Qwen/Qwen3-0.6B", "", ""),
    ],
)
def test_model_uri_forms(uri: str, scheme: str, model: str, revision: str, claim: str) -> None:
    parsed = parse_model_uri(uri)
    assert (parsed.scheme, parsed.model, parsed.revision, parsed.claim) == (
        scheme,
        model,
        revision,
        claim,
    )
    parse_spec(with_("model.uri", uri))


def test_name_must_be_a_service_name() -> None:
    check_name("qwen3-32b")
    for bad in ("Qwen3", "3b-model", "a" * 64, "has_underscore", "end-"):
        with pytest.raises(SpecError, match=r"^metadata\.name: .*DNS-1035"):
            check_name(bad)


def test_models_are_immutable_and_dump_with_aliases() -> None:
    spec = parse_spec(with_("modelCache", {"emptyDir": {"sizeLimit": "1Gi"}}))
    dumped = spec.model_dump(by_alias=True, exclude_none=True)
    assert dumped["modelCache"] == {"emptyDir": {"sizeLimit": "1Gi"}}
    assert parse_spec(dumped) == spec
    with pytest.raises(ValueError, match="frozen"):
        spec.replicas = 3  # type: ignore[misc]  # assigning a frozen field on purpose


def _samples() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted((ROOT / "manifests" / "samples").glob("*.yaml")):
        docs += [
            d
            for d in yaml.safe_load_all(path.read_text())
            if d and d.get("kind") == "InferenceService"
        ]
    return docs


def test_shipped_samples_are_valid() -> None:
    samples = _samples()
    if not samples:
        pytest.skip("no InferenceService samples in manifests/samples yet")
    for doc in samples:
        check_name(doc["metadata"]["name"])
        assert isinstance(parse_spec(doc["spec"]), InferenceServiceSpec)
        assert schema_accepts(doc["spec"]), doc["metadata"]["name"]
