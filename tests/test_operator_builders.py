"""The Deployment and Service built for an InferenceService: golden files and key facts.

Golden files live in ``tests/golden/operator/<case>.yaml`` (the Deployment, then
the Service). After an intended change, regenerate them and review the diff::

    UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_operator_builders.py

The facts that matter (limits == requests, the GPU limit string, probes, labels
valid as label values, ownerReferences, the babysitter's command line) are also
asserted directly, so a wrong golden file cannot hide a bug.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from llmsvc.operator.builders import (
    BuildDefaults,
    Owner,
    TokenSecret,
    build_deployment,
    build_service,
    engine_labels,
    initial_replicas,
    label_value,
    replica_range,
    selector_labels,
)
from llmsvc.operator.children import patch_for
from llmsvc.operator.runner import build_defaults
from llmsvc.operator.settings import OperatorSettings
from llmsvc.operator.spec import InferenceServiceSpec, parse_spec

GOLDEN = Path(__file__).resolve().parent / "golden" / "operator"
OWNER = Owner(name="qwen3-32b", namespace="llm", uid="6f1c2a40-0000-4000-8000-000000000001")
# As the chart starts the operator: its registry-token Secret, key `token`.
TOKEN = TokenSecret(name="llmsvc-registry-token", key="token")
DEFAULTS = BuildDefaults(registry_token=TOKEN)
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

CASES: dict[str, dict[str, Any]] = {
    # vLLM, 4 GPUs, tensor parallel, a gated model's token, a revision, CPU and memory.
    "vllm-4gpu-tp": {
        "model": {
            "name": "Qwen/Qwen3-32B",
            "uri": "hf://Qwen/Qwen3-32B@main",
            "hfTokenSecret": {"name": "hf-token"},
        },
        "engine": {"type": "vllm", "args": ["--tensor-parallel-size", "4"]},
        "replicas": 2,
        "resources": {"gpus": 4, "cpu": "16", "memory": "128Gi", "shm": "16Gi"},
        "startupTimeoutSeconds": 3600,
        "drainTimeoutSeconds": 60,
    },
    # SGLang with a PVC download cache and a routing weight.
    "sglang-cache-pvc": {
        "model": {"name": "llama-3.1-8b", "uri": "hf://meta-llama/Llama-3.1-8B-Instruct"},
        "modelCache": {"pvc": "hf-cache"},
        "engine": {"type": "sglang", "args": ["--mem-fraction-static", "0.85"]},
        "weight": 3,
    },
    # llama.cpp on CPU from a PVC: no GPU limit, no default toleration, no /dev/shm.
    "llamacpp-cpu-pvc": {
        "model": {"name": "qwen3-8b-gguf", "uri": "pvc://gguf-models/qwen3/Qwen3-8B-Q4_K_M.gguf"},
        "engine": {"type": "llama.cpp", "args": ["--ctx-size", "8192"]},
        "resources": {"gpus": 0, "cpu": 8, "memory": "16Gi", "shm": "0"},
    },
    # InfiniLM on MetaX GPUs: its own image, a node selector and the user's tolerations.
    "infinilm-metax": {
        "model": {"name": "jiuge-9g", "uri": "/models/9G7B_MHA"},
        "engine": {"type": "infinilm", "image": "registry.example.com/infinilm:2025.10"},
        "resources": {"gpus": 2, "gpuResource": "metax-tech.com/gpu"},
        "nodeSelector": {"metax-tech.com/gpu.product": "C500"},
        "tolerations": [{"key": "metax", "operator": "Exists"}],
    },
    # vLLM on AMD with every pod-level option and an emptyDir cache.
    "vllm-amd-options": {
        "model": {"name": "mistral-7b", "uri": "hf://mistralai/Mistral-7B-Instruct-v0.3"},
        "modelCache": {"emptyDir": {"sizeLimit": "50Gi"}},
        "engine": {
            "type": "vllm",
            "image": "registry.example.com/babysitter-vllm-rocm:0.1.0",
            "imagePullPolicy": "Always",
            "env": [
                {"name": "HF_HOME", "value": "/scratch"},
                {"name": "VLLM_LOGGING_LEVEL", "value": "DEBUG"},
                {
                    "name": "API_KEY",
                    "valueFrom": {"secretKeyRef": {"name": "keys", "key": "vllm"}},
                },
            ],
            "envFrom": [{"configMapRef": {"name": "vllm-tuning"}}],
        },
        "resources": {"gpus": 1, "gpuResource": "amd.com/gpu", "memory": "64Gi"},
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "gpu", "operator": "In", "values": ["mi300x"]}
                            ]
                        }
                    ]
                }
            }
        },
        "priorityClassName": "inference",
        "serviceAccountName": "llm-engines",
        "imagePullSecrets": [{"name": "registry-creds"}],
    },
    # The simulated engine: several replicas on CPU.
    "sim": {
        "model": {"name": "sim-model", "uri": "sim-model"},
        "engine": {"type": "sim"},
        "replicas": 3,
        "resources": {"gpus": 0, "cpu": "500m", "memory": "512Mi", "shm": "0"},
        "startupTimeoutSeconds": 120,
    },
    # Autoscaled from zero: spec.replicas 0 is only the initial size, raised to minReplicas.
    "sim-autoscaled": {
        "model": {"name": "sim-model", "uri": "sim-model"},
        "engine": {"type": "sim"},
        "replicas": 0,
        "autoscaling": {"minReplicas": 1, "maxReplicas": 8, "scaleDownDelay": "10m"},
        "resources": {"gpus": 0, "cpu": "500m", "memory": "512Mi", "shm": "0"},
    },
    # A command engine (its own image), the defaults otherwise.
    "command": {
        "model": {"name": "echo", "uri": "/srv/model"},
        "engine": {
            "type": "command",
            "image": "registry.example.com/my-engine:1",
            "args": ["my-server", "--port", "{port}", "--model", "{model}"],
        },
    },
}


def build(case: str) -> tuple[InferenceServiceSpec, dict[str, Any], dict[str, Any]]:
    spec = parse_spec(CASES[case])
    return spec, build_deployment(OWNER, spec, DEFAULTS), build_service(OWNER, spec)


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    only: dict[str, Any]
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def walk(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [value, *(x for v in value.values() for x in walk(v))]
    if isinstance(value, list):
        return [value, *(x for v in value for x in walk(v))]
    return [value]


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_golden_file(case: str) -> None:
    _, deployment, service = build(case)
    text = yaml.safe_dump_all([deployment, service], sort_keys=False, width=100)
    path = GOLDEN / f"{case}.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"no golden file {path}: run UPDATE_GOLDEN=1 pytest {__file__}"
    assert text == path.read_text(), f"{path} differs (UPDATE_GOLDEN=1 after review)"


@pytest.mark.parametrize("case", sorted(CASES))
def test_objects_are_valid_kubernetes(case: str) -> None:
    _, deployment, service = build(case)
    kubernetes_validate.validate(deployment, "1.31", strict=True)
    kubernetes_validate.validate(service, "1.31", strict=True)


@pytest.mark.parametrize("case", sorted(CASES))
def test_key_facts(case: str) -> None:
    spec, deployment, service = build(case)
    for obj in (deployment, service):
        assert None not in walk(obj)
        meta = obj["metadata"]
        assert (meta["name"], meta["namespace"]) == (OWNER.name, OWNER.namespace)
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "llmsvc.io/v1alpha1",
                "kind": "InferenceService",
                "name": OWNER.name,
                "uid": OWNER.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert meta["labels"] == engine_labels(OWNER.name, spec.model.name)
        assert all(LABEL_VALUE.match(v) and len(v) <= 63 for v in meta["labels"].values())
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["labels"] == deployment["metadata"]["labels"]
    assert pod["metadata"]["annotations"]["llmsvc.io/model"] == spec.model.name
    assert service["metadata"]["annotations"] == {
        "llmsvc.io/model": spec.model.name,
        "llmsvc.io/weight": str(spec.weight),
    }
    selector = {"llmsvc.io/inference-service": OWNER.name}
    assert deployment["spec"]["selector"] == {"matchLabels": selector}
    assert service["spec"]["selector"] == selector
    assert selector.items() <= pod["metadata"]["labels"].items()


@pytest.mark.parametrize("case", sorted(CASES))
def test_resources_requests_equal_limits(case: str) -> None:
    spec, deployment, _ = build(case)
    res = container(deployment).get("resources", {})
    assert res.get("limits") == res.get("requests")
    limits = res.get("limits", {})
    gpu = spec.resources.gpu_resource
    if spec.resources.gpus:
        assert limits[gpu] == str(spec.resources.gpus)  # a string quantity
    else:
        assert gpu not in limits
    assert limits.get("cpu") == spec.resources.cpu
    assert limits.get("memory") == spec.resources.memory


def test_gpu_resource_names_and_counts() -> None:
    assert container(build("vllm-4gpu-tp")[1])["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert container(build("vllm-amd-options")[1])["resources"]["limits"]["amd.com/gpu"] == "1"
    limits = container(build("infinilm-metax")[1])["resources"]["limits"]
    assert limits == {"metax-tech.com/gpu": "2"}


def test_babysitter_command_line() -> None:
    c = container(build("vllm-4gpu-tp")[1])
    assert c["name"] == "engine"
    assert c["image"] == "ghcr.io/llmsvc/babysitter-vllm:0.1.0"
    assert c["command"] == ["llmsvc", "babysitter"]
    assert c["args"] == [
        "--engine", "vllm", "--model", "Qwen/Qwen3-32B", "--model-name", "Qwen/Qwen3-32B",
        "--host", "0.0.0.0", "--port", "8000", "--name", "$(POD_NAME)",
        "--startup-timeout", "3600", "--drain-timeout", "60",
        "--termination-log", "/dev/termination-log", "--exit-on-crash-loop",
        "--log-format", "json",
        "--", "--revision", "main", "--tensor-parallel-size", "4",
    ]  # fmt: skip
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf-token", "key": "token"}}
    assert c["terminationMessagePath"] == "/dev/termination-log"
    assert "--" not in container(build("sim")[1])["args"]  # no engine args, no "--"


def test_default_images_per_engine_type() -> None:
    defaults = BuildDefaults(image_prefix="registry.local/llmsvc/", image_tag="dev")
    expected = {
        "vllm": "registry.local/llmsvc/babysitter-vllm:dev",
        "sglang": "registry.local/llmsvc/babysitter-sglang:dev",
        "llama.cpp": "registry.local/llmsvc/babysitter-llamacpp:dev",
        "sim": "registry.local/llmsvc/babysitter:dev",
    }
    for engine, image in expected.items():
        spec = parse_spec({"model": {"name": "m", "uri": "m"}, "engine": {"type": engine}})
        assert container(build_deployment(OWNER, spec, defaults))["image"] == image
    assert container(build("infinilm-metax")[1])["image"] == "registry.example.com/infinilm:2025.10"


def test_probes_on_the_babysitter_port() -> None:
    c = container(build("vllm-4gpu-tp")[1])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8000, "babysitter": 8001}
    startup, ready, live = c["startupProbe"], c["readinessProbe"], c["livenessProbe"]
    assert startup["httpGet"] == ready["httpGet"] == {"path": "/health", "port": "babysitter"}
    assert live["httpGet"] == {"path": "/status", "port": "babysitter"}
    assert startup["periodSeconds"] == 10
    # the babysitter's --startup-timeout (3600) runs out before the probe's window does
    assert startup["failureThreshold"] * 10 > 3600
    assert startup["failureThreshold"] == math.ceil((3600 + 30) / 10)
    assert ready["periodSeconds"] == 5
    assert (live["periodSeconds"], live["failureThreshold"]) == (10, 6)
    sim = container(build("sim")[1])["startupProbe"]
    assert sim["failureThreshold"] * sim["periodSeconds"] >= 120


def test_strategy_grace_and_deadline() -> None:
    _, deployment, _ = build("vllm-4gpu-tp")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
    }
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 60 + 40
    assert deployment["spec"]["progressDeadlineSeconds"] > 3600
    assert pod["enableServiceLinks"] is False


def test_headless_service_ports() -> None:
    service = build("sim")[2]
    assert service["spec"]["clusterIP"] == "None"
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
    assert ports == {"http": (8000, "http"), "babysitter": (8001, "babysitter")}


MAINTENANCE = {
    "llmsvc.io/maintenance": "GPU driver update",
    "llmsvc.io/maintenance-until": "2027-01-15T14:00:00Z",
}


def test_the_maintenance_annotations_are_copied_onto_the_service() -> None:
    spec = parse_spec(CASES["sim"])
    owner_annotations = {**MAINTENANCE, "team": "ml", "kopf.zalando.org/last-handled": "{}"}
    annotations = build_service(OWNER, spec, owner_annotations)["metadata"]["annotations"]
    assert annotations == {"llmsvc.io/model": "sim-model", "llmsvc.io/weight": "1", **MAINTENANCE}
    assert build_service(OWNER, spec) == build_service(OWNER, spec, {"team": "ml"})
    assert "llmsvc.io/maintenance" not in build_service(OWNER, spec)["metadata"]["annotations"]


def test_a_maintenance_annotation_the_owner_lost_is_patched_away() -> None:
    spec = parse_spec(CASES["sim"])
    live = build_service(OWNER, spec, MAINTENANCE)
    live["metadata"]["annotations"]["other.example.com/note"] = "kept"  # another writer's
    assert patch_for(live, build_service(OWNER, spec, MAINTENANCE)) is None
    only_until = {"llmsvc.io/maintenance": "GPU driver update"}
    patch = patch_for(live, build_service(OWNER, spec, only_until))
    assert patch is not None
    assert patch["metadata"]["annotations"]["llmsvc.io/maintenance-until"] is None
    patch = patch_for(live, build_service(OWNER, spec))
    assert patch is not None
    annotations = patch["metadata"]["annotations"]
    assert annotations["llmsvc.io/maintenance"] is None
    assert annotations["llmsvc.io/maintenance-until"] is None
    assert "other.example.com/note" not in annotations, "a merge patch leaves it alone"
    changed = patch_for(
        live, build_service(OWNER, spec, {**MAINTENANCE, "llmsvc.io/maintenance": "x"})
    )
    assert (
        changed is not None and changed["metadata"]["annotations"]["llmsvc.io/maintenance"] == "x"
    )


def test_gpu_toleration_default_only_with_gpus_and_no_user_tolerations() -> None:
    pod = build("vllm-4gpu-tp")[1]["spec"]["template"]["spec"]
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert "tolerations" not in build("llamacpp-cpu-pvc")[1]["spec"]["template"]["spec"]
    metax = build("infinilm-metax")[1]["spec"]["template"]["spec"]
    assert metax["tolerations"] == [{"key": "metax", "operator": "Exists"}]


def test_pvc_model_is_mounted_read_only() -> None:
    deployment = build("llamacpp-cpu-pvc")[1]
    c, pod = container(deployment), deployment["spec"]["template"]["spec"]
    args = c["args"]
    assert args[args.index("--model") + 1] == "/models/gguf-models/qwen3/Qwen3-8B-Q4_K_M.gguf"
    assert pod["volumes"] == [
        {"name": "model", "persistentVolumeClaim": {"claimName": "gguf-models", "readOnly": True}}
    ]
    assert c["volumeMounts"] == [
        {"name": "model", "mountPath": "/models/gguf-models", "readOnly": True}
    ]


def test_shm_and_model_cache() -> None:
    deployment = build("sglang-cache-pvc")[1]
    c, pod = container(deployment), deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    assert volumes["model-cache"]["persistentVolumeClaim"] == {"claimName": "hf-cache"}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts == {"dshm": "/dev/shm", "model-cache": "/models-cache"}
    assert {"name": "HF_HOME", "value": "/models-cache"} in c["env"]
    amd = container(build("vllm-amd-options")[1])
    names = [e["name"] for e in amd["env"]]
    assert names.count("HF_HOME") == 1  # the user's value wins
    assert {"name": "HF_HOME", "value": "/scratch"} in amd["env"]


def test_label_values() -> None:
    assert label_value("Qwen/Qwen3-32B") == "Qwen-Qwen3-32B"
    assert label_value("meta-llama/Llama 3.1:8b@main") == "meta-llama-Llama-3.1-8b-main"
    assert label_value("/x/") == "x"
    long = label_value("a" * 62 + "/b" + "c" * 10)
    assert len(long) <= 63 and LABEL_VALUE.match(long)
    assert LABEL_VALUE.match(label_value("_" * 70)) and label_value("_" * 70) == ""
    labels = engine_labels("qwen3-32b", "Qwen/Qwen3-32B")
    assert labels == {
        "app.kubernetes.io/component": "engine",
        "app.kubernetes.io/instance": "qwen3-32b",
        "app.kubernetes.io/managed-by": "llmsvc",
        "app.kubernetes.io/name": "llmsvc",
        "llmsvc.io/inference-service": "qwen3-32b",
        "llmsvc.io/model": "Qwen-Qwen3-32B",
    }
    assert selector_labels("qwen3-32b") == {"llmsvc.io/inference-service": "qwen3-32b"}


def test_builders_are_deterministic_and_do_not_share_state() -> None:
    spec, first, _ = build("vllm-amd-options")
    first["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["changed"] = True
    again = build_deployment(OWNER, spec, DEFAULTS)
    assert "changed" not in again["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
    assert build("vllm-amd-options")[1] == again


def registry_token_env(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return [e for e in container["env"] if e["name"] == "LLMSVC_REGISTRY_TOKEN"]


def test_engine_pods_get_the_registry_token_from_the_secret() -> None:
    """With it the babysitter's /drain, /restart and /model need the token (issue 11)."""
    _, deployment, _ = build("sim")
    ref = {"name": "llmsvc-registry-token", "key": "token", "optional": False}
    assert registry_token_env(deployment) == [
        {"name": "LLMSVC_REGISTRY_TOKEN", "valueFrom": {"secretKeyRef": ref}}
    ]
    spec = parse_spec(CASES["sim"])
    without = build_deployment(OWNER, spec, BuildDefaults())
    assert registry_token_env(without) == []


def test_registry_token_only_where_the_secret_is() -> None:
    """A pod can read Secrets of its own namespace only: none where the Secret is not."""
    spec = parse_spec(CASES["sim"])
    here = TokenSecret(name="t", key="k", namespaces=frozenset({"llm"}))
    elsewhere = TokenSecret(name="t", key="k", namespaces=frozenset({"other"}))
    assert registry_token_env(build_deployment(OWNER, spec, BuildDefaults(registry_token=here)))
    away = build_deployment(OWNER, spec, BuildDefaults(registry_token=elsewhere))
    assert registry_token_env(away) == []


def test_the_users_registry_token_env_wins() -> None:
    mine = {"secretKeyRef": {"name": "mine", "key": "t"}}
    env = [{"name": "LLMSVC_REGISTRY_TOKEN", "valueFrom": mine}]
    case = {**CASES["sim"], "engine": {"type": "sim", "env": env}}
    [found] = registry_token_env(build_deployment(OWNER, parse_spec(case), DEFAULTS))
    assert found["valueFrom"] == mine


def test_operator_flags_name_the_token_secret() -> None:
    settings = OperatorSettings(
        registry_token_secret="s",
        registry_token_secret_key="token",
        registry_token_secret_namespaces=["a", "b"],
    )
    wanted = TokenSecret(name="s", key="token", namespaces=frozenset({"a", "b"}))
    assert build_defaults(settings).registry_token == wanted
    assert build_defaults(OperatorSettings()).registry_token is None
    with pytest.raises(ValidationError, match="not a namespace name"):
        OperatorSettings(registry_token_secret_namespaces=["Not_A_Namespace"])


@pytest.mark.parametrize(
    ("replicas", "autoscaling", "created", "bounds"),
    [
        (2, None, 2, None),
        (0, None, 0, None),
        (0, {"minReplicas": 1, "maxReplicas": 8}, 1, (1, 8)),
        (10, {"minReplicas": 0, "maxReplicas": 4}, 4, (0, 4)),
        (3, {"minReplicas": 0, "maxReplicas": 4}, 3, (0, 4)),
        (1, {"minReplicas": 0}, 1, (0, 4)),  # maxReplicas defaults to 4
    ],
)
def test_an_autoscaled_deployment_starts_within_min_and_max(
    replicas: int, autoscaling: dict[str, Any] | None, created: int, bounds: tuple[int, int] | None
) -> None:
    spec = parse_spec({**CASES["sim"], "replicas": replicas, "autoscaling": autoscaling})
    assert initial_replicas(spec) == created
    assert replica_range(spec) == bounds
    assert build_deployment(OWNER, spec, DEFAULTS)["spec"]["replicas"] == created
