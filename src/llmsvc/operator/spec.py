"""The InferenceService custom resource as typed models: what users write, what it reports.

:class:`InferenceServiceSpec` is the one definition of the spec. The operator
validates every object with :func:`parse_spec`, and :mod:`llmsvc.operator.crd`
generates the CRD's OpenAPI schema from these same models (field docstrings
become the schema's descriptions), so the API server and the operator agree.

Rules that span several fields are written twice, side by side: a pydantic
validator (for the operator, which also sees objects created before a CRD
upgrade) and a CEL rule in the model's ``x-kubernetes-validations`` (for the
API server). ``docs/inferenceservice.md`` is the reference for users.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from llmsvc.operator.kubetypes import (
    DNS_SUBDOMAIN,
    ENV_NAME,
    RESOURCE_NAME,
    SECRET_KEY,
    SERVICE_NAME,
    SERVICE_NAME_MAX,
    Duration,
    FreeForm,
    Quantity,
    cel_rules,
    duration_seconds,
)
from llmsvc.operator.modeluri import URI_PATTERN, parse_model_uri

GROUP = "llmsvc.io"
VERSION = "v1alpha1"
KIND = "InferenceService"
PLURAL = "inferenceservices"
SINGULAR = "inferenceservice"
API_VERSION = f"{GROUP}/{VERSION}"

EngineType = Literal["vllm", "sglang", "llama.cpp", "infinilm", "infinilm-rust", "sim", "command"]
IMAGE_REQUIRED = ("infinilm", "infinilm-rust", "command")  # engines without a default image
REVISION_ENGINES = ("vllm", "sglang")  # engines with a --revision flag
Phase = Literal["Pending", "Progressing", "Ready", "Degraded", "Failed"]


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        strict=True,
        frozen=True,
        use_attribute_docstrings=True,
    )


class RuleError(ValueError):
    """A cross-field rule broken; ``field`` is the path below the model that owns the rule."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class SecretKeyRef(_Model):
    """A key of a Secret in the InferenceService's namespace."""

    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253)
    """The Secret's name."""
    key: str = Field(default="token", pattern=SECRET_KEY, max_length=253)
    """The key within the Secret whose value is used."""


HF_SECRET_RULE = "!has(self.hfTokenSecret) || self.uri.startsWith('hf://')"


class ModelSource(_Model):
    """The model to serve and where it comes from."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            (HF_SECRET_RULE, "hfTokenSecret is only used with an hf:// uri")
        )
    )

    name: str = Field(min_length=1, max_length=253)
    """The served model name: the id clients send as "model" (e.g. Qwen3-32B)."""
    uri: str = Field(
        min_length=1,
        max_length=2048,
        json_schema_extra={"pattern": URI_PATTERN},
    )
    """Where the weights are: hf://org/name[@revision] (downloaded by the engine),
    pvc://claim[/path] (mounted read-only at /models/<claim>), or a path inside the image."""
    hf_token_secret: SecretKeyRef | None = None
    """Secret holding a Hugging Face token, passed to the engine as HF_TOKEN (hf:// only)."""

    @field_validator("uri")
    @classmethod
    def _uri_form(cls, uri: str) -> str:
        parse_model_uri(uri)
        return uri

    @model_validator(mode="after")
    def _secret_needs_hf(self) -> ModelSource:
        if self.hf_token_secret is not None and not self.uri.startswith("hf://"):
            raise RuleError("hfTokenSecret", "is only used with an hf:// uri")
        return self


class EmptyDirCache(_Model):
    """A scratch cache that lives as long as the pod."""

    size_limit: Quantity | None = None
    """Largest size of the cache (e.g. 100Gi); unbounded when unset."""


CACHE_RULE = "has(self.pvc) != has(self.emptyDir)"


class ModelCache(_Model):
    """Where downloads go (HF_HOME=/models-cache): exactly one of pvc and emptyDir."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules((CACHE_RULE, "set exactly one of pvc and emptyDir"))
    )

    pvc: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, max_length=253)
    """A PersistentVolumeClaim (ReadWriteMany when replicas > 1): downloads survive restarts."""
    empty_dir: EmptyDirCache | None = None
    """An emptyDir: downloads survive engine restarts inside the pod, not the pod."""

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelCache:
        if (self.pvc is None) == (self.empty_dir is None):
            raise RuleError("", "set exactly one of pvc and emptyDir")
        return self


class EnvVar(_Model):
    """An environment variable of the engine container (a Kubernetes EnvVar, kept verbatim)."""

    name: str = Field(pattern=ENV_NAME, max_length=253)
    """The variable's name."""
    value: str | None = None
    """Its value."""
    value_from: FreeForm | None = None
    """Where its value comes from (secretKeyRef, configMapKeyRef, fieldRef, ...)."""


IMAGE_RULE = (
    "!(self.type in ['infinilm', 'infinilm-rust', 'command']) || "
    "(has(self.image) && self.image != '')"
)


class Engine(_Model):
    """The inference engine the babysitter runs."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            (IMAGE_RULE, "image is required for engine types infinilm, infinilm-rust and command")
        )
    )

    type: EngineType
    """vllm | sglang | llama.cpp | infinilm | infinilm-rust | sim | command."""
    image: str = Field(default="", max_length=1024)
    """Container image; empty: the operator's default for the type (required for infinilm,
    infinilm-rust and command)."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    """The container's imagePullPolicy (Kubernetes' default when unset)."""
    args: list[str] = Field(default_factory=list)
    """Extra engine arguments, after the babysitter's "--" (e.g. --tensor-parallel-size 4)."""
    env: list[EnvVar] = Field(default_factory=list)
    """Environment variables of the engine container; they win over the operator's own."""
    env_from: list[FreeForm] = Field(default_factory=list)
    """Sources of environment variables (configMapRef, secretRef), kept verbatim."""

    @model_validator(mode="after")
    def _image_when_no_default(self) -> Engine:
        if self.type in IMAGE_REQUIRED and not self.image:
            raise RuleError(
                "image", f"is required for engine type {self.type} (it has no default image)"
            )
        return self


class Resources(_Model):
    """What each engine pod gets; requests equal limits."""

    gpus: int = Field(default=1, ge=0, le=128)
    """GPUs per pod: limits[gpuResource]; 0 runs on CPU (no GPU limit, no GPU toleration)."""
    gpu_resource: str = Field(default="nvidia.com/gpu", pattern=RESOURCE_NAME, max_length=253)
    """The device plugin's resource name: nvidia.com/gpu, amd.com/gpu, metax-tech.com/gpu, ..."""
    cpu: Quantity | None = None
    """CPU per pod (requests = limits); unset: no CPU request or limit."""
    memory: Quantity | None = None
    """Memory per pod (requests = limits); unset: no memory request or limit."""
    shm: Quantity = "8Gi"
    """Size of /dev/shm (an in-memory emptyDir, counted in the pod's memory); "0": none."""


class LocalObjectReference(_Model):
    """A reference to an object in the same namespace."""

    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253)
    """The object's name."""


AUTOSCALING_RANGE_RULE = (
    "(has(self.minReplicas) ? self.minReplicas : 1) <= "
    "(has(self.maxReplicas) ? self.maxReplicas : 4)"
)


class Autoscaling(_Model):
    """Replicas follow demand (requests in flight + queued + held at the routers): the
    operator's autoscaler, or KEDA, sets the Deployment's replicas between min and max."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            (AUTOSCALING_RANGE_RULE, "minReplicas must not exceed maxReplicas")
        )
    )

    min_replicas: int = Field(default=1, ge=0, le=1000)
    """Fewest replicas; 0 scales to zero when idle (requests are held while one starts)."""
    max_replicas: int = Field(default=4, ge=1, le=1000)
    """Most replicas."""
    target_requests: int = Field(default=8, ge=1, le=100000)
    """Requests per replica (in flight + queued + held) the autoscaler aims at
    (metric requests)."""
    target_kv_cache: float = Field(default=0.8, gt=0, le=1)
    """Mean KV-cache usage per replica (0-1] the autoscaler aims at (metric kvCache)."""
    scale_up_delay: Duration = "0s"
    """How long demand must need more replicas before scaling up (0s: at once)."""
    scale_down_delay: Duration = "300s"
    """How long the need must stay below the current replicas before scaling down: the
    highest need over this window is kept."""
    metric: Literal["requests", "kvCache"] = "requests"
    """requests: demand / targetRequests; kvCache: KV-cache usage / targetKvCache (with
    waiting requests counted too, so a model at zero still scales up)."""

    @property
    def scale_up_seconds(self) -> float:
        return duration_seconds(self.scale_up_delay)

    @property
    def scale_down_seconds(self) -> float:
        return duration_seconds(self.scale_down_delay)

    @model_validator(mode="after")
    def _range(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise RuleError(
                "minReplicas",
                f"must not exceed maxReplicas ({self.min_replicas} > {self.max_replicas})",
            )
        return self


REVISION_RULE = "!self.model.uri.matches('^hf://[^@]*@') || self.engine.type in ['vllm', 'sglang']"


class InferenceServiceSpec(_Model):
    """The desired state: a model served by N replicas of a babysitter-managed engine."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            (REVISION_RULE, "an hf:// @revision is supported only by the vllm and sglang engines")
        )
    )

    model: ModelSource
    """The model to serve."""
    model_cache: ModelCache | None = None
    """A cache for downloaded weights, mounted at /models-cache (HF_HOME)."""
    engine: Engine
    """The engine."""
    replicas: int = Field(default=1, ge=0)
    """Number of engine pods (the scale subresource); with autoscaling, only the initial
    number (kept within minReplicas..maxReplicas)."""
    autoscaling: Autoscaling | None = None
    """Scale with demand, to and from zero (docs/autoscaling.md); unset: replicas is fixed."""
    weight: int = Field(default=1, ge=1, le=1000)
    """Routing weight of each replica (Service annotation llmsvc.io/weight)."""
    # The explicit "default: {}" lets the API server fill in the fields' own defaults.
    resources: Resources = Field(default_factory=Resources, json_schema_extra={"default": {}})
    """GPUs, CPU, memory and shared memory of each pod."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """The pods' nodeSelector."""
    tolerations: list[FreeForm] = Field(default_factory=list)
    """The pods' tolerations; default when gpus > 0: tolerate the <gpuResource> taint
    (operator Exists, effect NoSchedule)."""
    affinity: FreeForm | None = None
    """The pods' affinity, kept verbatim."""
    priority_class_name: str | None = Field(default=None, max_length=253)
    """The pods' priorityClassName."""
    service_account_name: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, max_length=253)
    """The pods' serviceAccountName."""
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list)
    """Secrets to pull the engine image with."""
    startup_timeout_seconds: int = Field(default=1800, ge=10, le=86400)
    """Seconds a replica may take to load its model before it is restarted."""
    drain_timeout_seconds: int = Field(default=30, ge=0, le=3600)
    """Seconds a stopping replica waits for in-flight requests (terminationGracePeriodSeconds =
    this + 40)."""

    @model_validator(mode="after")
    def _revision_engines(self) -> InferenceServiceSpec:
        revision = parse_model_uri(self.model.uri).revision
        if revision and self.engine.type not in REVISION_ENGINES:
            raise RuleError(
                "model.uri",
                f"an @revision is supported only by the vllm and sglang engines, "
                f"not {self.engine.type}",
            )
        return self


class Condition(_Model):
    """A condition in metav1.Condition form."""

    model_config = ConfigDict(extra="ignore", strict=False)

    type: str
    """Ready, Progressing or Degraded."""
    status: Literal["True", "False", "Unknown"]
    """True, False or Unknown."""
    reason: str
    """One CamelCase word (see docs/inferenceservice.md)."""
    message: str = ""
    """One sentence for humans, naming the pod concerned."""
    last_transition_time: str
    """When status last changed (RFC 3339)."""
    observed_generation: int = 0
    """The spec generation this condition was computed from."""


class Endpoint(_Model):
    """One engine pod."""

    model_config = ConfigDict(extra="ignore", strict=False)

    pod: str
    """The pod's name."""
    ip: str = ""
    """The pod's IP (empty until it has one)."""
    ready: bool = False
    """Whether the pod is Ready (its babysitter's /health answers 200)."""


class InferenceServiceStatus(_Model):
    """The observed state, written by the operator."""

    model_config = ConfigDict(extra="ignore", strict=False)

    phase: Phase = "Pending"
    """Pending | Progressing | Ready | Degraded | Failed."""
    replicas: int = 0
    """Engine pods that exist (the Deployment's status.replicas)."""
    ready_replicas: int = 0
    """Engine pods that are ready."""
    ready: str = "0/0"
    """readyReplicas/spec.replicas, for kubectl get."""
    selector: str = ""
    """Label selector of the pods (the scale subresource's labelSelectorPath)."""
    observed_generation: int = 0
    """The spec generation this status describes."""
    endpoints: list[Endpoint] = Field(default_factory=list)
    """Every engine pod with its IP and readiness."""
    conditions: list[Condition] = Field(default_factory=list)
    """Ready, Progressing and Degraded."""
    desired_replicas: int | None = None
    """Replicas the autoscaler last asked for (autoscaled services only)."""
    last_scale_time: str | None = None
    """When the autoscaler last changed the replicas (RFC 3339)."""
    last_cold_start_seconds: float | None = None
    """Seconds from the last scale-up to its first ready pod, measured by the operator."""


class SpecError(Exception):
    """An invalid spec; ``field`` is the path (``spec.resources.gpus``), ``str()`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def parse_spec(spec: Mapping[str, Any]) -> InferenceServiceSpec:
    """Validate a custom resource's ``spec``; :class:`SpecError` describes the first error."""
    if not isinstance(spec, Mapping):
        raise SpecError("spec", "must be an object")
    try:
        return InferenceServiceSpec.model_validate(dict(spec))
    except ValidationError as exc:
        raise _spec_error(exc) from None


def check_name(name: str) -> None:
    """The InferenceService's name also names its Service: a DNS-1035 label (CEL rule too)."""
    if len(name) > SERVICE_NAME_MAX or not re.match(SERVICE_NAME, name):
        raise SpecError(
            "metadata.name",
            f"{name!r} must be a DNS-1035 label (lowercase letters, digits and '-', starting "
            f"with a letter, at most {SERVICE_NAME_MAX} characters): it names the Service",
        )


def _spec_error(exc: ValidationError) -> SpecError:
    err = exc.errors(include_url=False)[0]
    parts = ["spec"]
    for p in err["loc"]:
        if isinstance(p, int):
            parts[-1] += f"[{p}]"
        else:
            parts.append(str(p))
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, RuleError) and cause.field:
        parts.append(cause.field)
    return SpecError(".".join(parts), _describe(err))


def _describe(err: Any) -> str:
    kind, ctx, given = err["type"], err.get("ctx") or {}, err.get("input")
    messages = {
        "missing": "is required",
        "extra_forbidden": "unknown field",
        "greater_than_equal": f"must be >= {ctx.get('ge')}",
        "less_than_equal": f"must be <= {ctx.get('le')}",
        "literal_error": f"must be one of {ctx.get('expected')}",
        "string_pattern_mismatch": f"must match {ctx.get('pattern')}",
        "string_too_short": "must not be empty",
        "string_too_long": f"must be at most {ctx.get('max_length')} characters",
        "int_type": "must be an integer",
        "string_type": "must be a string",
        "bool_type": "must be true or false",
        "list_type": "must be a list",
        "dict_type": "must be an object",
        "model_type": "must be an object",
    }
    message = messages.get(kind) or str(err["msg"]).removeprefix("Value error, ")
    if kind not in ("missing", "extra_forbidden", "value_error") and isinstance(
        given, str | int | float
    ):
        message += f" (got {given!r})"
    return message
