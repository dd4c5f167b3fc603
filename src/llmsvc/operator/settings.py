"""The operator's settings: one flag and one ``LLMSVC_*`` variable per field."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from llmsvc import __version__
from llmsvc.core.secrets import from_flag_or_file
from llmsvc.core.settings import BaseServiceSettings, CommaList


class OperatorSettings(BaseServiceSettings):
    """Settings of ``llmsvc operator``."""

    namespace: CommaList = Field(
        default_factory=list,
        description="Namespaces whose InferenceServices to manage (a,b or the flag repeated). "
        "Neither this nor --all-namespaces: the namespace of the current credentials "
        "(the pod's, or the kubeconfig context's, else 'default').",
    )
    all_namespaces: bool = Field(
        default=False,
        description="Manage InferenceServices in every namespace (needs cluster-wide RBAC).",
    )
    host: str = Field(
        default="0.0.0.0",
        description="Address of the health and metrics endpoint (0.0.0.0: kubelet probes "
        "reach it on the pod IP).",
    )
    port: int = Field(
        default=8090, ge=1, le=65535, description="TCP port of /health, /metrics, /openapi.json."
    )
    image_prefix: str = Field(
        default="ghcr.io/llmsvc",
        min_length=1,
        description="Registry and owner of the default engine images "
        "(<prefix>/babysitter-vllm:<tag>, ...), used when spec.engine.image is empty.",
    )
    image_tag: str = Field(
        default=__version__, min_length=1, description="Tag of the default engine images."
    )
    resync_interval: float = Field(
        default=30.0,
        gt=0,
        description="Seconds between two status recomputations of every InferenceService "
        "(a safety net: changes of its pods and Deployment are seen at once).",
    )
    status_debounce: float = Field(
        default=0.5,
        ge=0,
        description="Seconds to gather a burst of pod/Deployment changes into one status update.",
    )
    request_timeout: float = Field(
        default=30.0, gt=0, description="Seconds one Kubernetes API request may take."
    )
    watch_timeout: float = Field(
        default=300.0,
        gt=0,
        description="Seconds a watch request stays open before the API server ends it "
        "and it is reopened.",
    )
    batch_window: float = Field(
        default=0.1,
        ge=0,
        description="Seconds to wait for more watch events of one object before handling it.",
    )
    shutdown_timeout: float = Field(
        default=5.0, gt=0, description="Seconds to let open HTTP requests finish on SIGTERM."
    )
    registry_token_secret: str | None = Field(
        default=None,
        description="Secret holding the registry's write token, in the namespaces of the "
        "InferenceServices: their engine pods get it as LLMSVC_REGISTRY_TOKEN, so that the "
        "babysitter's /drain, /restart and /model need it (default none: they are open).",
    )
    registry_token_secret_key: str = Field(
        default="registry-token",
        min_length=1,
        description="Key of the token in --registry-token-secret.",
    )
    registry_token_secret_namespaces: CommaList = Field(
        default_factory=list,
        description="Namespaces that hold --registry-token-secret (a,b); engine pods elsewhere "
        "get no token (default: every namespace does).",
    )

    autoscaler: Literal["builtin", "keda", "none"] = Field(
        default="builtin",
        description="Who scales InferenceServices with spec.autoscaling: builtin (this "
        "operator, from the routers' demand), keda (this operator keeps a KEDA ScaledObject "
        "per service; KEDA scales), none (nobody: replicas stay as they are).",
    )
    autoscale_interval: float = Field(
        default=2.0, gt=0, description="Seconds between two autoscaling decisions (builtin)."
    )
    router_service: str | None = Field(
        default=None,
        description="The router's Service as namespace/name: every ready router pod in its "
        "EndpointSlices is asked for GET /demand (builtin autoscaler; the chart sets it). "
        "Unset: autoscaled services see no demand and stay at minReplicas.",
    )
    router_port_name: str = Field(
        default="http", min_length=1, description="Name of the router Service's HTTP port."
    )
    router_admin_token: SecretStr | None = Field(
        default=None,
        description="The router's admin token (GET /demand needs it when the router has one).",
    )
    router_admin_token_file: Path | None = Field(
        default=None, description="File holding --router-admin-token (a mounted Secret)."
    )
    router_timeout: float = Field(
        default=1.0,
        gt=0,
        description="Seconds one router's GET /demand may take; a router that does not answer "
        "in time is skipped for that round (and said so in the status' message).",
    )
    keda_prometheus_url: str = Field(
        default="http://prometheus-operated.monitoring.svc:9090",
        min_length=1,
        description="Prometheus that KEDA's trigger queries for llmsvc_router_model_demand "
        "(--autoscaler keda).",
    )

    @field_validator("all_namespaces")
    @classmethod
    def _one_namespace_choice(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("namespace"):
            raise ValueError("give --namespace or --all-namespaces, not both")
        return value

    @field_validator("router_service")
    @classmethod
    def _namespace_slash_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        namespace, slash, name = value.partition("/")
        if not slash or not _is_dns_label(namespace) or not _is_dns_label(name):
            raise ValueError(f"'{value}' is not namespace/name (e.g. llmsvc/llmsvc-router)")
        return value

    @model_validator(mode="after")
    def _router_token_from_file(self) -> OperatorSettings:
        self.router_admin_token = from_flag_or_file(
            self.router_admin_token, self.router_admin_token_file, flag="--router-admin-token"
        )
        return self

    @field_validator("namespace", "registry_token_secret_namespaces")
    @classmethod
    def _valid_namespaces(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _is_dns_label(name):
                raise ValueError(f"'{name}' is not a namespace name (a DNS label)")
        return value


def _is_dns_label(name: str) -> bool:
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789-")
    return 0 < len(name) <= 63 and set(name) <= allowed and name[0] != "-" and name[-1] != "-"
