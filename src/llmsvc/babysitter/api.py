"""The babysitter API's response bodies (they also document ``/openapi.json``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Health(BaseModel):
    status: str = Field(description="'ok' while the engine is ready.")
    state: str


class LastExit(BaseModel):
    code: int | None = Field(description="Exit code; null when killed by a signal.")
    signal: int | None = Field(description="Signal number that ended the engine, if any.")
    reason: str = Field(
        description="crashed, hung, startup-timeout, spawn-failed, requested or stopped."
    )
    detail: str = ""
    at: float = Field(description="Unix time of the exit.")


class Registered(BaseModel):
    engine: bool
    babysitter: bool


class Status(BaseModel):
    state: str
    pid: int | None = Field(description="The engine's process id.")
    restarts: int
    uptime_s: float | None = Field(description="Seconds since the engine process started.")
    model: str | None
    model_name: str | None
    models: list[str]
    engine: str
    name: str
    url: str = Field(description="The engine's registered base URL.")
    last_exit: LastExit | None
    registered: Registered
    router: str | None
    registry: str | None


class RestartAccepted(BaseModel):
    restarting: bool
    state: str


class Drained(BaseModel):
    drained: bool
    in_flight: int = Field(description="Requests still in flight when the wait ended.")
    waited_s: float
    timed_out: bool


class EngineModels(BaseModel):
    object: str = "list"
    data: list[dict[str, Any]]
