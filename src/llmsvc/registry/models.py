"""Response bodies of the registry's own endpoints (records are ``core.records``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from llmsvc.core.records import ServiceRecord


class KubernetesHealth(BaseModel):
    """The Kubernetes source's state (``--source kubernetes``)."""

    namespaces: list[str] | None = Field(description="Namespaces watched; null: all.")
    synced: bool = Field(description="Every EndpointSlice and Service list has been read once.")
    watching: bool = Field(description="No list or watch is failing right now.")
    records: int = Field(description="Records that come from Kubernetes.")


class RegistryHealth(BaseModel):
    """``GET /health``: the registry itself is up."""

    status: Literal["ok"] = "ok"
    source: str
    services: int = Field(description="Registered services.")
    healthy: int = Field(description="Of which healthy.")
    index: int = Field(description="The change index.")
    uptime_s: float
    kubernetes: KubernetesHealth | None = Field(
        default=None, description="With --source kubernetes: the source's state."
    )


class RegistryStats(BaseModel):
    """``GET /stats``."""

    total: int
    healthy: int
    unhealthy: int
    standby: int = Field(
        default=0, description="Engines in standby (stopped or asleep while idle); not healthy."
    )
    by_type: dict[str, int] = Field(description="Services per record type.")
    by_model: dict[str, int] = Field(description="Services serving each model id.")
    index: int = Field(description="The change index.")
    uptime_s: float


class ServiceCheck(BaseModel):
    """``GET /services/{name}/health``: the check just run, and the record after it."""

    name: str
    healthy: bool = Field(description="Whether this check succeeded (a 2xx answer).")
    url: str = Field(description="The URL that was checked.")
    http_status: int | None = Field(description="The answer's status; null if none came.")
    error: str | None = Field(description="Why the check failed; null on success.")
    latency_s: float
    service: ServiceRecord
