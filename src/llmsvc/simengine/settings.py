"""Settings of ``llmsvc sim-engine``: one flag and one ``LLMSVC_*`` variable per field."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import Field, TypeAdapter, ValidationError, field_validator, model_validator

from llmsvc.core.settings import CommaList, ServerSettings
from llmsvc.simengine.profiles import load_profile


class SimEngineSettings(ServerSettings):
    """The simulated engine: where it listens, what it serves, how its timing behaves."""

    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=8000, ge=1, le=65535, description="TCP port to listen on.")
    model_name: CommaList = Field(
        default_factory=lambda: ["sim-model"],
        description="Comma-separated model ids this engine serves (clients send them as model).",
    )
    engine_id: str | None = Field(
        default=None,
        description="Id reported as system_fingerprint and in the X-Llmsvc-Engine header; "
        "default sim-<host>-<port>.",
    )
    profile: str | None = Field(
        default=None,
        description="A named timing profile (llmsvc/simengine/profiles/NAME.json, or a path to "
        "a .json file) giving the timing defaults; flags and env still win.",
    )
    seed: int = Field(
        default=0, description="Seed of every random choice: text, jitter, step noise, faults."
    )
    chars_per_token: float = Field(
        default=4.0, gt=0, description="Characters of prompt text per simulated token."
    )
    max_num_seqs: int = Field(
        default=32, ge=1, description="Sequences decoded at once; later requests wait (FIFO)."
    )
    kv_cache_tokens: int = Field(
        default=65536,
        ge=1,
        description="KV-cache size in tokens; a request reserves prompt + max output tokens.",
    )
    prefill_tokens_per_s: float = Field(
        default=8000.0, gt=0, description="Prefill speed in tokens/s for uncached prompt tokens."
    )
    prefill_overhead_s: float = Field(
        default=0.0,
        ge=0,
        description="Seconds added to each batched step that prefills (a prompt pass's fixed "
        "cost: the TTFT of a one-token prompt).",
    )
    decode_tokens_per_s: float = Field(
        default=40.0, gt=0, description="Decode speed of one sequence alone, in tokens/s."
    )
    decode_slowdown: float = Field(
        default=0.04,
        ge=0,
        description="Per-sequence decode time grows by this fraction per other running sequence.",
    )
    scheduler: Literal["batched", "independent"] = Field(
        default="batched",
        description="batched: one step at a time over every running sequence, sharing "
        "--max-batched-tokens (as vLLM and llama.cpp); independent: each sequence on its own "
        "clock (the model before issue 12).",
    )
    max_batched_tokens: int = Field(
        default=2048,
        ge=1,
        description="Tokens one batched step processes at most (vLLM's max_num_batched_tokens): "
        "one per decoding sequence, the rest prefill chunks.",
    )
    batch_wait_s: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Seconds an idle engine waits, once a request arrives, before its first "
        "step, so that requests arriving together prefill in one step (llama.cpp: a few ms; "
        "fitted).",
    )
    jitter: float = Field(
        default=0.0, ge=0, le=1, description="Random +/- fraction applied to every duration."
    )
    step_noise: float = Field(
        default=0.0,
        ge=0,
        le=2,
        description="Sigma of a lognormal (median 1) factor drawn once per step and applied to "
        "its duration, shared by every sequence in the step (a real engine's spread; fitted); "
        "0: steps last exactly the model's time.",
    )
    block_size: int = Field(default=16, ge=1, description="Prefix-cache block size in tokens.")
    prefix_cache_tokens: int = Field(
        default=32768, ge=0, description="Prefix-cache capacity in tokens (LRU over blocks)."
    )
    default_max_tokens: int = Field(
        default=32, ge=1, description="Output tokens when a request gives no max_tokens."
    )
    time_scale: float = Field(
        default=1.0,
        ge=0,
        description="Multiplies every simulated duration; 0 answers at once (tests, CPU bench).",
    )
    fail_rate: float = Field(
        default=0.0, ge=0, le=1, description="Fraction of requests answered 500 (fault injection)."
    )
    startup_delay: float = Field(
        default=0.0,
        ge=0,
        description="Seconds (wall clock, not scaled) before /health is 200, as if loading.",
    )
    wake_delay: float = Field(
        default=0.5,
        ge=0,
        description="Seconds (times --time-scale) POST /wake_up takes to wake a sleeping "
        "engine (vLLM's sleep mode: weights back from CPU memory).",
    )
    embedding_dim: int = Field(
        default=256, ge=1, le=8192, description="Length of embedding vectors by default."
    )

    @field_validator("model_name")
    @classmethod
    def _some_model(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one model name is required")
        return value

    @model_validator(mode="before")
    @classmethod
    def _profile_defaults(cls, data: Any) -> Any:
        """Fill the timing fields not given (flags, env) from ``--profile``."""
        if not isinstance(data, dict) or not data.get("profile"):
            return data
        name = str(data["profile"])
        profile = load_profile(name)
        for key, value in profile.items():
            info = cls.model_fields[key]
            try:
                adapter: TypeAdapter[Any] = TypeAdapter(Annotated[info.annotation, info])  # type: ignore[arg-type]
                adapter.validate_python(value)
            except ValidationError as exc:
                reason = exc.errors(include_url=False)[0]["msg"]
                raise ValueError(f"profile {name!r}: {key}: {reason} (got {value!r})") from None
        return {**profile, **data}

    @model_validator(mode="after")
    def _budget_holds_every_decode(self) -> Self:
        if self.scheduler == "batched" and self.max_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"--max-batched-tokens ({self.max_batched_tokens}) must be at least "
                f"--max-num-seqs ({self.max_num_seqs}): every running sequence decodes each step"
            )
        return self

    def resolved_engine_id(self) -> str:
        return self.engine_id or f"sim-{self.host}-{self.port}"
