"""The registry's settings: one flag and one ``LLMSVC_*`` variable per field."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from llmsvc.core.secrets import from_flag_or_file
from llmsvc.core.settings import CommaList, ServerSettings

NO_WRITE_TOKEN = (
    "no write token: give --token or --token-file (LLMSVC_TOKEN), "
    "or --allow-anonymous-writes to let anyone write"
)
"""Why a registry with neither a write token nor the opt-out does not start."""


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
        description="The write token: writes (POST, PUT, DELETE, heartbeat) and reads "
        "(GET /services, /services/{name}, /stats, a check on demand) need "
        "'Authorization: Bearer <token>'; /health and /metrics stay open. Required "
        "unless --allow-anonymous-writes.",
    )
    token_file: Path | None = Field(
        default=None,
        description="File holding --token (one line: a mounted Secret, compose's tokens).",
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description="The admin token: accepted wherever --token is, and may also "
        "override a name's lease (take a name another registration holds).",
    )
    admin_token_file: Path | None = Field(
        default=None, description="File holding --admin-token (one line)."
    )
    allow_anonymous_writes: bool = Field(
        default=False,
        description="Run without --token: anyone who can reach the port may read, "
        "register, replace and remove services (leases still apply). Warned at start.",
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

    @model_validator(mode="after")
    def _tokens(self) -> RegistrySettings:
        """Each token from its flag or its file; a write token, or the explicit opt-out."""
        self.token = from_flag_or_file(self.token, self.token_file, flag="--token")
        self.admin_token = from_flag_or_file(
            self.admin_token, self.admin_token_file, flag="--admin-token"
        )
        if self.token is None and not self.allow_anonymous_writes:
            raise ValueError(NO_WRITE_TOKEN)
        if self.token is not None and self.allow_anonymous_writes:
            raise ValueError("give --token or --allow-anonymous-writes, not both")
        admin, write = self.admin_token, self.token
        if admin is not None and write is not None and admin == write:
            raise ValueError("--admin-token must differ from --token")
        return self
