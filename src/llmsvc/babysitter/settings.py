"""The babysitter's settings: one flag and one ``LLMSVC_*`` variable per field."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from llmsvc.core.settings import BaseServiceSettings, CommaList

EngineName = Literal["vllm", "sglang", "llama.cpp", "infinilm", "infinilm-rust", "sim", "command"]

ENGINES: tuple[str, ...] = (
    "vllm",
    "sglang",
    "llama.cpp",
    "infinilm",
    "infinilm-rust",
    "sim",
    "command",
)


class BabysitterSettings(BaseServiceSettings):
    """Settings of ``llmsvc babysitter``. Everything after ``--`` goes to the engine."""

    engine: EngineName = Field(
        description="Engine to launch: " + "|".join(ENGINES) + " (required)."
    )
    model: str | None = Field(
        default=None,
        description="Model path or id passed to the engine; required except for 'command'.",
    )
    model_name: str | None = Field(
        default=None,
        description="Served model name (default: last part of --model; a .gguf file's stem).",
    )
    host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="Address the engine and the babysitter bind; also the address registered.",
    )
    advertise_host: str | None = Field(
        default=None,
        description="Address to register instead of --host (when binding 0.0.0.0).",
    )
    port: int = Field(
        default=8000,
        ge=1,
        le=65534,
        description="Engine port; the babysitter's own API listens on port + 1.",
    )
    name: str | None = Field(
        default=None,
        description="Registry name of the engine (default: <model-name>@<host>:<port>).",
    )
    registry: str | None = Field(
        default=None, description="Registry base URL; without it nothing is registered."
    )
    registry_token: str | None = Field(
        default=None, description="Bearer token for registry writes (registry --token)."
    )
    router: str | None = Field(
        default=None, description="Router base URL; informational, shown in /status."
    )
    gpus: CommaList = Field(
        default_factory=list,
        description="GPU indices, e.g. 0,1: sets the visible-devices variable and the TP size.",
    )
    visible_devices_env: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable that receives --gpus (default: per engine, see docs).",
    )
    weight: int = Field(default=1, ge=1, le=1000, description="Routing weight registered.")
    startup_timeout: float = Field(
        default=600.0,
        gt=0,
        description="Seconds the engine may take to become ready before it is killed.",
    )
    restart_backoff: float = Field(
        default=1.0,
        ge=0,
        description="Base restart delay in seconds; doubles per consecutive failure, max 60.",
    )
    max_restarts: int = Field(
        default=5,
        ge=0,
        description="Failures allowed within --restart-window before the state is 'failed'.",
    )
    restart_window: float = Field(
        default=600.0, gt=0, description="Window in seconds in which failures are counted."
    )
    min_free_gpu_mem: float = Field(
        default=0.0,
        ge=0,
        description="GiB of free memory each GPU needs before launch (accepted; preflight TBD).",
    )
    log_dir: str | None = Field(
        default=None,
        description="Append engine output to <log-dir>/<name>.engine.log (default: stderr).",
    )
    health_interval: float = Field(
        default=5.0, gt=0, description="Seconds between health checks of the engine."
    )
    heartbeat_interval: float = Field(
        default=10.0, gt=0, description="Seconds between registry heartbeats."
    )
    stop_timeout: float = Field(
        default=30.0, ge=0, description="Seconds between SIGTERM and SIGKILL of the engine."
    )
    drain_timeout: float = Field(
        default=60.0, ge=0, description="Seconds POST /drain waits for in-flight requests."
    )
