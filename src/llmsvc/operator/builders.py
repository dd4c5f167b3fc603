"""The Kubernetes objects of one InferenceService, built by pure functions.

For an InferenceService ``<name>`` the operator owns a Deployment ``<name>`` of
babysitter pods and a headless Service ``<name>`` whose EndpointSlices the
registry reads. Everything here returns plain JSON-ready dicts (kopf and the
kubernetes client both take them): no I/O, deterministic, no ``None`` values.
The layout of the pod is described in ``docs/inferenceservice.md``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llmsvc.core.names import (
    INFERENCE_SERVICE_LABEL,
    MAINTENANCE_ANNOTATIONS,
    MODEL_ANNOTATION,
    MODEL_LABEL,
    WEIGHT_ANNOTATION,
)
from llmsvc.operator.spec import API_VERSION, KIND, InferenceServiceSpec, SpecError
from llmsvc.operator.volumes import environment, model_uri, volume_mounts, volumes

ENGINE_CONTAINER = "engine"
HTTP_PORT = 8000
BABYSITTER_PORT = 8001
TERMINATION_LOG = "/dev/termination-log"
# terminationGracePeriodSeconds = drainTimeoutSeconds + this: the babysitter's --stop-timeout
# (30 s between SIGTERM and SIGKILL of the engine) plus 10 s for the babysitter to exit.
STOP_MARGIN_SECONDS = 40
STARTUP_PROBE_MARGIN_S = 30  # three startup probe periods
# progressDeadlineSeconds = startupTimeoutSeconds + this: scheduling and the image pull.
PROGRESS_MARGIN_SECONDS = 600
DEFAULT_IMAGES = {
    "vllm": "babysitter-vllm",
    "sglang": "babysitter-sglang",
    "llama.cpp": "babysitter-llamacpp",
    "sim": "babysitter",
}
LABEL_VALUE_MAX = 63
# The babysitter's --registry-token: with it, its control endpoints need that token.
REGISTRY_TOKEN_ENV = "LLMSVC_REGISTRY_TOKEN"


@dataclass(frozen=True)
class TokenSecret:
    """Where engine pods find the registry's write token (``--registry-token-secret``)."""

    name: str
    key: str = "registry-token"
    namespaces: frozenset[str] = frozenset()
    """Namespaces that hold the Secret; empty: every one."""

    def env(self, namespace: str) -> list[dict[str, Any]]:
        """``LLMSVC_REGISTRY_TOKEN`` from the Secret, for a pod in ``namespace`` (if it has it)."""
        if self.namespaces and namespace not in self.namespaces:
            return []
        ref = {"name": self.name, "key": self.key, "optional": False}
        return [{"name": REGISTRY_TOKEN_ENV, "valueFrom": {"secretKeyRef": ref}}]


@dataclass(frozen=True)
class BuildDefaults:
    """Operator-wide defaults (``--image-prefix``, ``--image-tag``, ``--registry-token-secret``)."""

    image_prefix: str = "ghcr.io/llmsvc"
    image_tag: str = "0.1.0"
    registry_token: TokenSecret | None = None


@dataclass(frozen=True)
class Owner:
    """The InferenceService that owns the objects built."""

    name: str
    namespace: str
    uid: str


def label_value(text: str) -> str:
    """``text`` as a valid label value: ``[A-Za-z0-9._-]``, <= 63 chars, alnum at both ends."""
    value = re.sub(r"[^A-Za-z0-9._-]", "-", text)[:LABEL_VALUE_MAX]
    return value.strip("._-")


def selector_labels(owner_name: str) -> dict[str, str]:
    """The labels that select an InferenceService's pods (Deployment and Service)."""
    return {INFERENCE_SERVICE_LABEL: label_value(owner_name)}


def engine_labels(owner_name: str, model_name: str) -> dict[str, str]:
    """The labels on everything the operator creates for an InferenceService."""
    labels = {
        "app.kubernetes.io/name": "llmsvc",
        "app.kubernetes.io/instance": label_value(owner_name),
        "app.kubernetes.io/component": "engine",
        "app.kubernetes.io/managed-by": "llmsvc",
        MODEL_LABEL: label_value(model_name),
        **selector_labels(owner_name),
    }
    return dict(sorted(labels.items()))


def owner_reference(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def engine_image(spec: InferenceServiceSpec, defaults: BuildDefaults) -> str:
    """``engine.image``, else the operator's default for the engine type."""
    if spec.engine.image:
        return spec.engine.image
    name = DEFAULT_IMAGES.get(spec.engine.type)
    if name is None:  # parse_spec rejects this already
        raise SpecError("spec.engine.image", f"is required for engine type {spec.engine.type}")
    return f"{defaults.image_prefix.rstrip('/')}/{name}:{defaults.image_tag}"


def babysitter_args(spec: InferenceServiceSpec) -> list[str]:
    """The arguments of ``llmsvc babysitter`` in the engine container."""
    uri = model_uri(spec)
    args = ["--engine", spec.engine.type, "--model", uri.model, "--model-name", spec.model.name]
    args += ["--host", "0.0.0.0", "--port", str(HTTP_PORT), "--name", "$(POD_NAME)"]
    args += ["--startup-timeout", str(spec.startup_timeout_seconds)]
    args += ["--drain-timeout", str(spec.drain_timeout_seconds)]
    args += ["--termination-log", TERMINATION_LOG, "--exit-on-crash-loop", "--log-format", "json"]
    engine_args = (["--revision", uri.revision] if uri.revision else []) + spec.engine.args
    return [*args, "--", *engine_args] if engine_args else args


def resources(spec: InferenceServiceSpec) -> dict[str, Any]:
    """Requests equal limits: the GPU count (a string), CPU and memory when given."""
    limits: dict[str, str] = {}
    res = spec.resources
    if res.gpus > 0:
        limits[res.gpu_resource] = str(res.gpus)
    if res.cpu is not None:
        limits["cpu"] = res.cpu
    if res.memory is not None:
        limits["memory"] = res.memory
    limits = dict(sorted(limits.items()))
    return {"limits": limits, "requests": dict(limits)} if limits else {}


def probes(spec: InferenceServiceSpec) -> dict[str, Any]:
    """Startup and readiness on the babysitter's /health, liveness on its /status."""
    health = {"path": "/health", "port": "babysitter"}
    # The window outlasts the babysitter's own --startup-timeout by STARTUP_PROBE_MARGIN_S,
    # so that it records StartupTimeout (in the termination message) before the kubelet acts.
    window = spec.startup_timeout_seconds + STARTUP_PROBE_MARGIN_S
    startup_failures = max(1, math.ceil(window / 10))
    return {
        "startupProbe": {
            "httpGet": health,
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": startup_failures,
        },
        "readinessProbe": {"httpGet": health, "periodSeconds": 5, "timeoutSeconds": 5},
        "livenessProbe": {
            "httpGet": {"path": "/status", "port": "babysitter"},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 6,
        },
    }


def engine_container(
    spec: InferenceServiceSpec, defaults: BuildDefaults, namespace: str
) -> dict[str, Any]:
    token = defaults.registry_token.env(namespace) if defaults.registry_token else []
    theirs = {env.name for env in spec.engine.env}
    container: dict[str, Any] = {
        "name": ENGINE_CONTAINER,
        "image": engine_image(spec, defaults),
        "command": ["llmsvc", "babysitter"],
        "args": babysitter_args(spec),
        "env": [e for e in token if e["name"] not in theirs] + environment(spec),
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "babysitter", "containerPort": BABYSITTER_PORT, "protocol": "TCP"},
        ],
        **probes(spec),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.engine.image_pull_policy is not None:
        container["imagePullPolicy"] = spec.engine.image_pull_policy
    if spec.engine.env_from:
        container["envFrom"] = [dict(source) for source in spec.engine.env_from]
    if res := resources(spec):
        container["resources"] = res
    if mounts := volume_mounts(spec):
        container["volumeMounts"] = mounts
    return container


def tolerations(spec: InferenceServiceSpec) -> list[dict[str, Any]]:
    """The user's, else (with GPUs) the usual GPU node taint ``<gpuResource>:NoSchedule``."""
    if spec.tolerations:
        return [dict(t) for t in spec.tolerations]
    if spec.resources.gpus > 0:
        key = spec.resources.gpu_resource
        return [{"key": key, "operator": "Exists", "effect": "NoSchedule"}]
    return []


def pod_spec(spec: InferenceServiceSpec, defaults: BuildDefaults, namespace: str) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "containers": [engine_container(spec, defaults, namespace)],
        # Service links would put <SERVICE>_PORT variables in the engine's environment;
        # vLLM reads VLLM_PORT, so a Service named "vllm" would break it.
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": spec.drain_timeout_seconds + STOP_MARGIN_SECONDS,
    }
    optional: dict[str, Any] = {
        "volumes": volumes(spec),
        "tolerations": tolerations(spec),
        "nodeSelector": dict(sorted(spec.node_selector.items())),
        "affinity": dict(spec.affinity) if spec.affinity else None,
        "priorityClassName": spec.priority_class_name,
        "serviceAccountName": spec.service_account_name,
        "imagePullSecrets": [{"name": s.name} for s in spec.image_pull_secrets],
    }
    pod.update({key: value for key, value in optional.items() if value})
    return pod


def _metadata(
    owner: Owner, spec: InferenceServiceSpec, annotations: dict[str, str]
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": owner.name,
        "namespace": owner.namespace,
        "labels": engine_labels(owner.name, spec.model.name),
        "ownerReferences": [owner_reference(owner)],
    }
    if annotations:
        meta["annotations"] = dict(sorted(annotations.items()))
    return meta


def replica_range(spec: InferenceServiceSpec) -> tuple[int, int] | None:
    """``(minReplicas, maxReplicas)`` of an autoscaled service; ``None``: replicas is fixed.

    With autoscaling the Deployment's ``spec.replicas`` belongs to the autoscaler
    (the operator's, or KEDA's HPA): the operator only keeps it within this range.
    """
    scaling = spec.autoscaling
    return None if scaling is None else (scaling.min_replicas, scaling.max_replicas)


def clamp_replicas(replicas: int, bounds: tuple[int, int] | None) -> int:
    """``replicas`` within ``bounds`` (as it is without them)."""
    if bounds is None:
        return replicas
    low, high = bounds
    return max(low, min(high, replicas))


def initial_replicas(spec: InferenceServiceSpec) -> int:
    """The replicas a new Deployment gets: ``spec.replicas``, kept within min..max when
    autoscaled (there ``spec.replicas`` is only the initial size)."""
    return clamp_replicas(spec.replicas, replica_range(spec))


def build_deployment(
    owner: Owner, spec: InferenceServiceSpec, defaults: BuildDefaults
) -> dict[str, Any]:
    """The Deployment ``<name>`` of engine pods (no surge: GPUs are scarce).

    Its ``spec.replicas`` is :func:`initial_replicas`; for an autoscaled service that
    is the size it is created with only (:func:`llmsvc.operator.children.patch_for`
    with ``replicas_within`` keeps the live count afterwards).
    """
    template_meta = {
        "labels": engine_labels(owner.name, spec.model.name),
        "annotations": {MODEL_ANNOTATION: spec.model.name},
    }
    return _without_none(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _metadata(owner, spec, {}),
            "spec": {
                "replicas": initial_replicas(spec),
                "selector": {"matchLabels": selector_labels(owner.name)},
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
                },
                "progressDeadlineSeconds": spec.startup_timeout_seconds + PROGRESS_MARGIN_SECONDS,
                "template": {
                    "metadata": template_meta,
                    "spec": pod_spec(spec, defaults, owner.namespace),
                },
            },
        }
    )


def build_service(
    owner: Owner, spec: InferenceServiceSpec, owner_annotations: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The headless Service ``<name>``: model name and routing weight in its annotations.

    The InferenceService's maintenance annotations (``owner_annotations``: its own)
    are copied as they are: the registry reads Services, not InferenceServices, so
    that it needs no access to the custom resource.
    """
    annotations = {MODEL_ANNOTATION: spec.model.name, WEIGHT_ANNOTATION: str(spec.weight)}
    for name in MAINTENANCE_ANNOTATIONS:
        value = (owner_annotations or {}).get(name)
        if isinstance(value, str):
            annotations[name] = value
    return _without_none(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _metadata(owner, spec, annotations),
            "spec": {
                "clusterIP": "None",
                "selector": selector_labels(owner.name),
                "ports": [
                    {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
                    {
                        "name": "babysitter",
                        "port": BABYSITTER_PORT,
                        "targetPort": "babysitter",
                        "protocol": "TCP",
                    },
                ],
            },
        }
    )


def _without_none(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` without ``None`` values in its dicts and lists (from the user's objects)."""
    cleaned: dict[str, Any] = _drop_none(obj)
    return cleaned


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value if v is not None]
    return value
