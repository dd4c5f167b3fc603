"""The registry's service record, shared by registry, router and babysitter."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from llmsvc.core.addresses import (
    HOSTNAME_PATTERN,
    MAX_HOST_LENGTH,
    ORIGIN_PATTERN,
    check_host,
    check_origin_url,
    host_origin,
    origin_of,
)
from llmsvc.core.errors import echoed

# Record types with a meaning; any other string is kept but never routed to.
OPENAI_API = "openai-api"
BABYSITTER = "babysitter"
INFERENCE_SERVICE = "inference-service"
"""A Kubernetes InferenceService's Service with no ready endpoint: its ``metadata.models``
are known (requests are held or answered 503, not 404), never routed to."""

Status = Literal["healthy", "unhealthy", "standby"]
"""standby: an engine its babysitter has stopped or put to sleep (scale to zero on bare metal):
kept registered so that its model stays known, never routed to, not health-checked."""

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,252}$"
# The document's approximation of an origin URL and of a host (the validators parse them;
# they also take IP literals, IPv6 in brackets, which the patterns leave out rather than
# describe them).
_URL_PATTERN = ORIGIN_PATTERN
_HOST_PATTERN = HOSTNAME_PATTERN
# What metadata.health_path may be: a plain path on the record's origin.
_HEALTH_PATH = re.compile(r"/?(?!/)[A-Za-z0-9._~!$&'()*+,;=:@%/-]*")


class ServiceRegistration(BaseModel):
    """What a client sends to register or update a service."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_NAME_PATTERN, description="Unique name of the service.")
    host: str = Field(
        min_length=1,
        max_length=MAX_HOST_LENGTH,
        description="Hostname (RFC 1123) or IP address the engine listens on.",
        json_schema_extra={"pattern": _HOST_PATTERN},  # checked by _host, with its messages
    )
    port: int = Field(ge=1, le=65535, description="TCP port (an integer, not a string).")
    url: str | None = Field(
        default=None,
        description="The engine's origin, scheme://host:port (no credentials, path, query "
        "or fragment); derived from host and port when absent.",
        json_schema_extra={"pattern": _URL_PATTERN},  # checked by _url_scheme, with its messages
    )
    type: str = Field(default=OPENAI_API, min_length=1, max_length=64)
    weight: int = Field(default=1, ge=1, le=1000)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("port", "weight", mode="before")
    @classmethod
    def _not_a_boolean(cls, value: Any) -> Any:
        if isinstance(value, bool):  # pydantic's lax mode would take true for 1
            raise ValueError("must be an integer, not true or false")
        return value

    @field_validator("port", mode="before")
    @classmethod
    def _not_a_string(cls, value: Any) -> Any:
        if isinstance(value, str):  # pydantic's lax mode would take "80" for 80
            raise ValueError(f"must be an integer, not the string {echoed(value, 20)!r}")
        return value

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return check_host(value)

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, value: str | None) -> str | None:
        return check_origin_url(value) if value is not None else None

    @field_validator("metadata")
    @classmethod
    def _models_are_strings(cls, value: dict[str, Any]) -> dict[str, Any]:
        models = value.get("models")
        if models is not None and (
            not isinstance(models, list) or not all(isinstance(m, str) for m in models)
        ):
            raise ValueError("metadata.models must be a list of strings")
        health_path = value.get("health_path")
        if health_path is not None and (
            not isinstance(health_path, str) or not _HEALTH_PATH.fullmatch(health_path)
        ):
            raise ValueError(
                "metadata.health_path must be a path such as /health (no query or fragment)"
            )
        return value

    def origin(self) -> str:
        """``scheme://host:port`` of the engine: what every upstream URL starts with."""
        return origin_of(self.url) if self.url else host_origin(self.host, self.port)


class ServiceRecord(ServiceRegistration):
    """A registered service as the registry keeps and returns it."""

    model_config = ConfigDict(extra="ignore")

    url: str | None = None  # stored before origins were checked: reduced to the origin
    status: Status = "healthy"
    registered_at: float = 0.0
    last_heartbeat: float = 0.0
    last_check: float | None = None
    consecutive_failures: int = 0

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, value: str | None) -> str | None:
        # A record saved by an older registry (a state file) may hold a path or
        # credentials: it keeps its origin only, so it never steers a request elsewhere.
        return origin_of(value) if value else value

    @model_validator(mode="after")
    def _derive_url(self) -> ServiceRecord:
        if not self.url:
            self.url = self.origin()
        return self

    @property
    def models(self) -> list[str]:
        """``metadata.models``, else the seeds' singular ``metadata.model`` (one model)."""
        models = self.metadata.get("models")
        if isinstance(models, list):
            return list(models)
        model = self.metadata.get("model")
        return [model] if isinstance(model, str) and model else []

    @property
    def healthy(self) -> bool:
        return self.status == "healthy"


class RegisteredService(ServiceRecord):
    """The answer to ``POST /services``: the record and the name's lease.

    Heartbeats, updates and deletes of the name present the lease in
    ``X-Llmsvc-Lease``; reads never show it.
    """

    lease: str


class Heartbeat(BaseModel):
    """Optional body of ``POST /services/{name}/heartbeat``: the sender's own health verdict.

    ``unhealthy`` counts as a failed health check and ``healthy`` as a passed one,
    so a babysitter whose engine died makes the registry (and every router
    watching it) take the engine out at once, while the record stays visible.
    """

    model_config = ConfigDict(extra="forbid")

    status: Status | None = None


class ServiceList(BaseModel):
    services: list[ServiceRecord]
    total: int
