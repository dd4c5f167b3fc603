"""The registry's settings: one flag and one ``LLMSVC_*`` variable per field."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator

from llmsvc.core.settings import CommaList, ServerSettings


class RegistrySettings(ServerSettings):
    """Settings of ``llmsvc registry``."""

    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=8081, ge=1, le=65535, description="TCP port to listen on.")
    health_interval: float = Field(
        default=30.0,
        gt=0,
        description="Seconds between two health checks of every registered service.",
    )
    health_timeout: float = Field(
        default=5.0,
        gt=0,
        description="Seconds one health check may take before it counts as a failure.",
    )
    cleanup_interval: float = Field(
        default=60.0,
        gt=0,
        description="Seconds between two sweeps that apply the heartbeat TTL "
        "(mark stale services unhealthy, remove those older than 2x TTL).",
    )
    heartbeat_ttl: float = Field(
        default=90.0,
        ge=0,
        description="Seconds without a heartbeat after which a service is unhealthy; "
        "after twice this it is removed. 0 disables the TTL.",
    )
    token: SecretStr | None = Field(
        default=None,
        description="When set, writes (POST, PUT, DELETE, heartbeat) need "
        "'Authorization: Bearer <token>'. Reads stay open.",
    )
    max_metadata_bytes: int = Field(
        default=16 * 1024,
        ge=2,
        description="Largest serialized 'metadata' of one record, in bytes; a larger one "
        "is refused with 413 'metadata too large'.",
    )
    max_records: int = Field(
        default=10_000,
        ge=1,
        description="Most records the registry holds; registering a new name past it is "
        "a 429 (existing names still re-register, update and heartbeat).",
    )
    max_registrations_per_second: float = Field(
        default=20.0,
        ge=0,
        description="Registrations (POST /services) a second per client address, with a "
        "burst of twice that; past it a 429 with Retry-After. Heartbeats are not counted. "
        "0 disables the limit.",
    )
    tls_cert: str | None = Field(default=None, description="PEM certificate file to serve HTTPS.")
    tls_key: str | None = Field(default=None, description="PEM private key of --tls-cert.")
    state_file: Path | None = Field(
        default=None,
        description="JSON file that keeps the registrations across restarts; "
        "written atomically after every change.",
    )
    source: Literal["static", "kubernetes"] = Field(
        default="static",
        description="Where records come from: 'static' (HTTP registrations only) or "
        "'kubernetes' (the EndpointSlices of the operator's Services too).",
    )
    namespace: CommaList = Field(
        default_factory=list,
        description="Kubernetes namespaces to watch with --source kubernetes (a,b,c); "
        "default: the current kubeconfig context's, or the registry pod's own.",
    )
    all_namespaces: bool = Field(
        default=False, description="Watch every namespace with --source kubernetes."
    )

    @field_validator("token")
    @classmethod
    def _empty_token_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            return None
        return value

    @field_validator("tls_key")
    @classmethod
    def _tls_pair(cls, value: str | None, info: ValidationInfo) -> str | None:
        if bool(value) != bool(info.data.get("tls_cert")):
            raise ValueError("--tls-cert and --tls-key must be given together")
        return value

    @field_validator("all_namespaces")
    @classmethod
    def _one_namespace_choice(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("namespace"):
            raise ValueError("give --namespace or --all-namespaces, not both")
        return value
