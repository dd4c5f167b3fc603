"""The babysitter's settings: one flag and one ``LLMSVC_*`` variable per field."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator

from llmsvc.babysitter.gpus import GpuProbe
from llmsvc.core.secrets import from_flag_or_file
from llmsvc.core.settings import CommaList, ServerSettings

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


class BabysitterSettings(ServerSettings):
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
    registry_token: SecretStr | None = Field(
        default=None,
        description="The registry's write token (registry --token), sent to the registry; "
        "POST /drain, /restart and /model then need it too as 'Authorization: Bearer'.",
    )
    registry_token_file: Path | None = Field(
        default=None,
        description="File holding --registry-token (a mounted Secret, compose's tokens).",
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
        description="Base restart delay in seconds; doubles per consecutive failure "
        "(max 60 s, ±20%% jitter).",
    )
    max_restarts: int = Field(
        default=5,
        ge=0,
        description="Failures allowed within --restart-window; one more is 'crash-loop' "
        "(no more restarts until POST /restart).",
    )
    restart_window: float = Field(
        default=600.0, gt=0, description="Window in seconds in which failures are counted."
    )
    stable_uptime: float = Field(
        default=60.0,
        ge=0,
        description="Seconds an engine must stay ready before the backoff starts again "
        "from --restart-backoff.",
    )
    hung_after: int = Field(
        default=3,
        ge=1,
        description="Failed health checks in a row of a live engine that mean it hangs "
        "(killed, reason Hung): with the defaults a hung engine is killed about 4 s after it "
        "stops answering.",
    )
    preflight: bool = Field(
        default=True,
        description="Check free host and GPU memory before each launch (--no-preflight: "
        "launch whatever is free).",
    )
    min_free_mem: float | None = Field(
        default=None,
        ge=0,
        description="GiB of free host memory (MemAvailable, within the cgroup's limit) "
        "needed before launch (default: 1, or a quarter of the babysitter's cgroup memory "
        "limit when that is below 4 GiB, a small pod's; 0: not checked).",
    )
    min_free_gpu_mem: float | None = Field(
        default=None,
        ge=0,
        description="GiB of free memory each GPU (--gpus, else all) needs before launch "
        "(default: what the engine's command line says it takes, vLLM's "
        "--gpu-memory-utilization x the GPU's memory, else not checked; 0: not checked).",
    )
    gpu_probe: GpuProbe = Field(
        default="auto",
        description="How GPU memory is read: auto (NVML if installed, else nvidia-smi), "
        "nvml, nvidia-smi or off.",
    )
    resource_interval: float = Field(
        default=15.0,
        ge=0,
        description="Seconds between looks at the engine's GPUs (memory, utilization, "
        "temperature) and its host memory for /metrics; 0: never.",
    )
    gpu_release_timeout: float = Field(
        default=60.0,
        ge=0,
        description="Seconds a model swap waits for the old engine's GPU memory to be freed.",
    )
    log_dir: str | None = Field(
        default=None,
        description="Engine output to <log-dir>/<name>.engine.log and the babysitter's own "
        "JSON log to <name>.babysitter.log, both size-rotated (default: stderr).",
    )
    log_max_bytes: int = Field(
        default=50 * 1024 * 1024,
        ge=0,
        description="Size in bytes at which a log under --log-dir is rotated (0: never).",
    )
    log_backups: int = Field(
        default=5, ge=0, description="Rotated copies kept of each log under --log-dir."
    )
    health_interval: float = Field(
        default=1.0,
        gt=0,
        description="Seconds from the start of one health check of the engine to the next "
        "(a check that takes longer is followed by the next at once).",
    )
    health_timeout: float = Field(
        default=1.0,
        gt=0,
        description="Seconds one probe of the engine (/health, its models, its metrics) may "
        "take; a slower health check counts as failed.",
    )
    heartbeat_interval: float = Field(
        default=10.0, gt=0, description="Seconds between registry heartbeats."
    )
    stop_timeout: float = Field(
        default=30.0, ge=0, description="Seconds between SIGTERM and SIGKILL of the engine."
    )
    termination_log: str | None = Field(
        default=None,
        description="File to write '<Reason>: <detail>' to after every failed engine life "
        "(Kubernetes shows /dev/termination-log in the pod's status).",
    )
    exit_on_crash_loop: bool = Field(
        default=False,
        description="Exit 1 instead of waiting for POST /restart when restarts stop "
        "(crash-loop, failed), so that Kubernetes restarts the pod and shows why.",
    )
    drain_timeout: float = Field(
        default=60.0,
        ge=0,
        description="Seconds a drain (POST /drain, POST /model, SIGTERM) waits for "
        "in-flight requests.",
    )

    idle_timeout: float = Field(
        default=0.0,
        ge=0,
        description="Seconds the engine may sit idle (its own metrics: nothing running or "
        "waiting, its request counters unchanged) before it goes to standby (--standby); "
        "0: never.",
    )
    standby: Literal["stop", "sleep"] = Field(
        default="stop",
        description="How an idle engine waits for POST /wake: stop (the process ends, the GPU "
        "is free; a wake is a full start) or sleep (vLLM's sleep mode: weights offloaded, a "
        "wake takes seconds; vllm and sim only).",
    )
    gpu_lock_dir: str | None = Field(
        default=None,
        description="Directory of the per-GPU lock files that babysitters with --idle-timeout "
        "and --gpus hold while their engine runs, so that models sharing a GPU take turns "
        "(default $XDG_RUNTIME_DIR/llmsvc, else /tmp/llmsvc-<uid>).",
    )

    @model_validator(mode="after")
    def _token_from_file(self) -> BabysitterSettings:
        """The registry token from its flag or its file (``--registry-token-file``)."""
        self.registry_token = from_flag_or_file(
            self.registry_token, self.registry_token_file, flag="--registry-token"
        )
        return self
