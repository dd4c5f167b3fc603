"""Settings of ``llmsvc simulate``: one flag and one ``LLMSVC_*`` variable per field."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from llmsvc.core.settings import BaseServiceSettings, CommaList
from llmsvc.simulate.api import POLICIES


class SimulateSettings(BaseServiceSettings):
    """The trace, the policies to compare, the engines' timing and the report."""

    workers: int = Field(
        default=5,
        ge=1,
        le=10000,
        description="Engines of the fixed and standby fleets; the autoscalers' maxReplicas "
        "unless --max-replicas.",
    )
    duration: float = Field(
        default=30.0, gt=0, description="Seconds of traffic (simulated; a CSV's may be longer)."
    )
    trace: str = Field(
        default="steady",
        description="steady, bursty, diurnal (a day compressed into --duration), "
        "spike-from-zero (idle, a burst, idle), or FILE.csv with "
        "arrival_s,prompt_tokens,output_tokens.",
    )
    rate: float = Field(
        default=5.0, gt=0, description="Mean requests/s of a built-in trace over --duration."
    )
    prompt_tokens: int = Field(
        default=64, ge=1, description="Mean prompt tokens of a built-in trace's requests."
    )
    output_tokens: int = Field(
        default=32, ge=1, description="Mean output tokens of a built-in trace's requests."
    )
    policy: CommaList = Field(
        default_factory=lambda: [str(name) for name in POLICIES],
        description="Policies to compare: fixed, autoscale (min 1), autoscale-zero (min 0), "
        "standby (bare metal: idle engines to standby, woken as demand asks: --wake-target).",
    )
    seed: int = Field(default=0, description="Seed of the trace and the step noise.")
    profile: str | None = Field(
        default=None,
        description="A sim-engine timing profile (name or .json path), as llmsvc sim-engine "
        "--profile; default: the sim-engine's defaults.",
    )
    startup_delay: float | None = Field(
        default=None,
        ge=0,
        description="Seconds an engine takes to start (a cold start; a standby --standby stop "
        "wake); default 30.",
    )
    wake_delay: float | None = Field(
        default=None,
        ge=0,
        description="Seconds a sleeping engine takes to wake (--standby sleep); default the "
        "sim-engine's (0.5).",
    )
    max_replicas: int | None = Field(
        default=None, ge=1, description="Autoscalers' maxReplicas (default --workers)."
    )
    target_requests: float | None = Field(
        default=None, gt=0, description="Autoscalers' targetRequests per replica (default 8)."
    )
    target_kv_cache: float | None = Field(
        default=None, gt=0, le=1, description="Autoscalers' targetKvCache (default 0.8)."
    )
    metric: Literal["requests", "kvCache"] | None = Field(
        default=None, description="Autoscalers' metric: requests or kvCache (default requests)."
    )
    scale_up_delay: float | None = Field(
        default=None, ge=0, description="Autoscalers' scaleUpDelay in seconds (default 0)."
    )
    scale_down_delay: float | None = Field(
        default=None, ge=0, description="Autoscalers' scaleDownDelay in seconds (default 300)."
    )
    autoscale_interval: float = Field(
        default=2.0, gt=0, description="Seconds between the autoscaler's decisions."
    )
    idle_timeout: float = Field(
        default=10.0, ge=0, description="standby: idle seconds before standby (0: never)."
    )
    idle_check_interval: float = Field(
        default=0.0,
        ge=0,
        description="standby: 0: standby exactly --idle-timeout after the last request; "
        "else seen at health checks this far apart, as the babysitter's --health-interval.",
    )
    wake_target: float = Field(
        default=8,
        ge=0,
        description="standby: requests (in flight, queued, held) per awake engine before "
        "another standby engine is woken, as the router's --wake-target (0: only the first, "
        "while nothing is ready).",
    )
    standby: Literal["stop", "sleep"] = Field(
        default="stop",
        description="standby: stop (a wake is a --startup-delay) or sleep (a --wake-delay).",
    )
    hold_timeout: float = Field(
        default=30.0,
        ge=0,
        description="Seconds the router holds a request while no engine is ready, then 503.",
    )
    strategy: Literal["least_connections", "round_robin"] = Field(
        default="least_connections",
        description="How the router picks among the ready engines (the router's --strategy "
        "of the same name; its default is round_robin).",
    )
    backend_concurrency: int | None = Field(
        default=None,
        ge=1,
        description="The router's slots per engine (its --backend-concurrency): a request "
        "finding every ready engine's slots taken waits in the router's queue; default "
        "unlimited (no router queue).",
    )
    queue_size: int = Field(
        default=1000, ge=0, description="Requests that may wait for a slot, then 429."
    )
    queue_timeout: float = Field(
        default=60.0, gt=0, description="Seconds a request may wait for a slot, then 503."
    )
    plots: Path | None = Field(
        default=None,
        description="Directory for replicas.png and ttft.png (needs matplotlib: the bench extra).",
    )
    output: Literal["text", "json"] = Field(
        default="text", description="Report format; --json is short for --output json."
    )
    progress: bool = Field(
        default=True, description="A progress bar on stderr (only when it is a terminal)."
    )

    @field_validator("policy")
    @classmethod
    def _known_policies(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one policy is required")
        unknown = [name for name in value if name not in POLICIES]
        if unknown:
            raise ValueError(f"unknown policy {unknown[0]!r} (known: {', '.join(POLICIES)})")
        return list(dict.fromkeys(value))
