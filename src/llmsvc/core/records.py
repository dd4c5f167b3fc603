"""The registry's service record, shared by registry, router and babysitter."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Record types with a meaning; any other string is kept but never routed to.
OPENAI_API = "openai-api"
BABYSITTER = "babysitter"

Status = Literal["healthy", "unhealthy"]

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,252}$"
# The document's approximation of a URL with a host (the validator parses it; it also
# takes [IPv6] literals, which the pattern leaves out rather than describe them).
_URL_PATTERN = r"^https?://[A-Za-z0-9]"


class ServiceRegistration(BaseModel):
    """What a client sends to register or update a service."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_NAME_PATTERN, description="Unique name of the service.")
    host: str = Field(min_length=1, max_length=253)
    port: int = Field(ge=1, le=65535)
    url: str | None = Field(
        default=None,
        description="Base URL; derived from host and port.",
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

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        if value is not None and not urlsplit(value).hostname:
            raise ValueError("url must name a host after http:// or https://")
        return value.rstrip("/") if value else value

    @field_validator("metadata")
    @classmethod
    def _models_are_strings(cls, value: dict[str, Any]) -> dict[str, Any]:
        models = value.get("models")
        if models is not None and (
            not isinstance(models, list) or not all(isinstance(m, str) for m in models)
        ):
            raise ValueError("metadata.models must be a list of strings")
        return value

    def base_url(self) -> str:
        return self.url or f"http://{_bracket(self.host)}:{self.port}"


class ServiceRecord(ServiceRegistration):
    """A registered service as the registry keeps and returns it."""

    model_config = ConfigDict(extra="ignore")

    url: str | None = None
    status: Status = "healthy"
    registered_at: float = 0.0
    last_heartbeat: float = 0.0
    last_check: float | None = None
    consecutive_failures: int = 0

    @model_validator(mode="after")
    def _derive_url(self) -> ServiceRecord:
        if not self.url:
            self.url = self.base_url()
        return self

    @property
    def models(self) -> list[str]:
        models = self.metadata.get("models")
        return list(models) if isinstance(models, list) else []

    @property
    def healthy(self) -> bool:
        return self.status == "healthy"


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


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
