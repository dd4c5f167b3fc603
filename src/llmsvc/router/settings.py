"""The router's settings: one flag and one ``LLMSVC_*`` variable per field."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from llmsvc.core.settings import BaseServiceSettings, CommaList

Strategy = Literal[
    "round_robin", "least_connections", "ip_hash", "session", "least_load", "prefix_affinity"
]

# Strategies of the contract that this version runs; the others are accepted
# by the type (so that the flag's help lists them) and refused at start.
IMPLEMENTED_STRATEGIES: frozenset[str] = frozenset({"round_robin", "least_connections"})

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024


class RouterSettings(BaseServiceSettings):
    """Settings of ``llmsvc router``."""

    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=8080, ge=1, le=65535, description="TCP port to listen on.")
    registry_url: str | None = Field(
        default=None,
        description="Base URL of the registry to watch; without it only static services route.",
    )
    registry_token: str | None = Field(
        default=None, description="Bearer token for a registry started with --token."
    )
    static_services: str | None = Field(
        default=None,
        description="YAML or JSON file of service records (a list, or {services: [...]}), "
        "kept even when the registry is down.",
    )
    strategy: Strategy = Field(
        default="round_robin",
        description="Load-balancing strategy: round_robin (smooth weighted) or "
        "least_connections (ip_hash, session, least_load, prefix_affinity come later).",
    )
    health_interval: float = Field(
        default=30.0, gt=0, description="Seconds between active GET /health checks of backends."
    )
    health_timeout: float = Field(
        default=5.0, gt=0, description="Seconds an active health check may take."
    )
    max_fails: int = Field(
        default=3,
        ge=0,
        description="Failures within --fail-timeout that take a backend out (nginx); 0 disables.",
    )
    fail_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds of the failure window and of the time a failed backend stays out.",
    )
    retries: int = Field(
        default=2, ge=0, description="Further backends tried after a connect error, timeout or 5xx."
    )
    registry_sync_interval: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a blocking registry query waits; also the retry delay after errors.",
    )
    registry_restart_grace: float = Field(
        default=30.0,
        ge=0,
        description="Seconds after the registry comes back from an outage during which backends "
        "it no longer lists stay in the view (a restarted registry is empty until engines "
        "re-register).",
    )
    proxy_timeout: float = Field(
        default=300.0, gt=0, description="Seconds one upstream request may take in total."
    )
    proxy_connect_timeout: float = Field(
        default=60.0, gt=0, description="Seconds to connect to a backend."
    )
    first_byte_timeout: float | None = Field(
        default=None,
        gt=0,
        description="Seconds until the upstream answers headers before trying another backend "
        "(default: --proxy-timeout).",
    )
    stream_idle_timeout: float | None = Field(
        default=None,
        gt=0,
        description="Seconds a stream may stall after its first byte before it ends with an "
        "in-band error event (default: no limit).",
    )
    tls_cert: str | None = Field(default=None, description="PEM certificate file to serve HTTPS.")
    tls_key: str | None = Field(default=None, description="PEM private key of --tls-cert.")
    api_keys: CommaList = Field(
        default_factory=list,
        description="API keys clients must send as 'Authorization: Bearer <key>' (comma list).",
    )
    api_keys_file: str | None = Field(
        default=None, description="File of API keys, one per line, '#' starts a comment."
    )
    max_body_bytes: int = Field(
        default=DEFAULT_MAX_BODY_BYTES,
        ge=1024,
        description="Largest request body in bytes; larger ones get 413.",
    )
    workers: int = Field(
        default=1, ge=1, description="Processes sharing the port (only 1 in this version)."
    )

    def first_byte_limit(self) -> float:
        return self.first_byte_timeout or self.proxy_timeout
