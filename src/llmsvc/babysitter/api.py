"""The babysitter API's response bodies (they also document ``/openapi.json``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from llmsvc.core.names import Reason

_REASONS = [str(r) for r in Reason]


class Health(BaseModel):
    status: str = Field(description="'ok' while the engine is ready.")
    state: str


class LastExit(BaseModel):
    code: int | None = Field(description="Exit code; null when killed by a signal or not run.")
    signal: int | None = Field(description="Signal number that ended the engine, if any.")
    reason: str = Field(description=", ".join(_REASONS[:-1]) + f" or {_REASONS[-1]}.")
    detail: str = Field(default="", description="One line: the matching stderr line, a signal.")
    at: float = Field(description="Unix time of the exit.")
    model: str | None = Field(default=None, description="The model the engine served.")


class PreflightCheck(BaseModel):
    what: str = Field(description="'host memory' or 'GPU <index>'.")
    free_gib: float
    need_gib: float


class Preflight(BaseModel):
    ok: bool
    message: str
    checks: list[PreflightCheck]
    notes: list[str] = Field(description="Checks skipped and why (e.g. no GPU visible).")


class Swap(BaseModel):
    from_model: str | None
    to_model: str
    rollback: bool
    state: str = Field(description="in-progress, done, failed or rolled-back.")
    reason: str | None = Field(description="Why the new model failed (an exit reason).")
    detail: str
    started_at: float
    finished_at: float | None


class Registered(BaseModel):
    engine: bool
    babysitter: bool


_RECORD_STATE = (
    "registered; unregistered (not yet, or withdrawn); conflict (another registration "
    "holds the name: retried every heartbeat interval); rejected (the registry refused "
    "the record); unreachable (the registry does not answer); off (no --registry)."
)


class Registration(BaseModel):
    engine: str = Field(description="The engine's record: " + _RECORD_STATE)
    babysitter: str = Field(description="The babysitter's own record: " + _RECORD_STATE)


class Standby(BaseModel):
    mode: str = Field(description="--standby: stop or sleep.")
    idle_timeout: float = Field(description="--idle-timeout, seconds.")
    since: float | None = Field(description="Unix time it went to standby; null when not in it.")
    wakes: int = Field(description="Wakes from standby that reached ready.")
    last_wake_seconds: float | None = Field(
        description="The last measured wake (POST /wake to ready); null before the first."
    )


class Status(BaseModel):
    # GET /status: a snapshot of the supervisor (Supervisor.snapshot); no docstring, which
    # would become the schema's description in /openapi.json.
    model_config = ConfigDict(frozen=True)

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
    consecutive_failures: int = Field(description="Failures since the engine was last stable.")
    stderr_tail: list[str] = Field(description="The last 50 lines of the engine's stderr.")
    preflight: Preflight | None = Field(description="The latest pre-launch memory check.")
    swap: Swap | None = Field(description="The latest model swap (POST /model).")
    log_file: str | None = Field(description="The engine's log file (--log-dir).")
    registered: Registered
    registration: Registration = Field(description="Where each record stands in the registry.")
    router: str | None
    registry: str | None
    standby: Standby | None = Field(
        default=None, description="Standby of an idle engine; null without --idle-timeout."
    )


class WakeAccepted(BaseModel):
    state: str = Field(description="'waking' when it was in standby, else the state now.")


class RestartAccepted(BaseModel):
    restarting: bool
    state: str


class SwapAccepted(BaseModel):
    swapping: bool
    state: str
    from_model: str | None
    to_model: str


class Drained(BaseModel):
    drained: bool
    in_flight: int = Field(description="Requests still in flight when the wait ended.")
    waited_s: float
    timed_out: bool


class Stopped(BaseModel):
    drained: bool
    in_flight: int = Field(description="Requests still in flight when the drain ended.")
    waited_s: float = Field(description="Seconds the drain waited for in-flight requests.")
    timed_out: bool = Field(description="The drain ended at --drain-timeout.")
    stopped: bool = Field(description="The engine's process was stopped (false: none ran).")
    released: str = Field(
        description="What the wait for the engine's processes and GPU memory saw: "
        "'GPU memory released: ...', '... not released in time: ...' or 'no GPU visible'."
    )


class EngineModels(BaseModel):
    object: str = "list"
    data: list[dict[str, Any]]
