"""The simulated engines' timing: ``llmsvc sim-engine``'s defaults, a profile, flags.

The values come from the same places as the real simulated engine's: the defaults of
:class:`~llmsvc.simengine.settings.SimEngineSettings` (read, never instantiated, so
no ``LLMSVC_*`` variable of a running engine leaks in), then a named profile's
``settings`` (:func:`~llmsvc.simengine.profiles.load_profile`), then explicit
overrides. Only the fields the simulator uses are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from llmsvc.simengine.profiles import load_profile
from llmsvc.simengine.settings import SimEngineSettings

DEFAULT_STARTUP_DELAY = 30.0
"""A cold start when neither flag nor profile says: a small model's load, not the
sim-engine's own default of 0 (made for tests)."""

DEFAULT_WAKE_DELAY = 0.5
"""vLLM's sleep level 1 wake, when the sim-engine has no ``wake_delay`` setting."""


@dataclass(frozen=True, slots=True)
class EngineTiming:
    """What the simulator needs of one engine's timing (the sim-engine's names)."""

    max_num_seqs: int = 32
    kv_cache_tokens: int = 65536
    prefill_tokens_per_s: float = 8000.0
    prefill_overhead_s: float = 0.0
    decode_tokens_per_s: float = 40.0
    decode_slowdown: float = 0.04
    max_batched_tokens: int = 2048
    batch_wait_s: float = 0.0
    step_noise: float = 0.0
    startup_delay: float = DEFAULT_STARTUP_DELAY
    wake_delay: float = DEFAULT_WAKE_DELAY

    def __post_init__(self) -> None:
        for name in ("prefill_tokens_per_s", "decode_tokens_per_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive (got {getattr(self, name)!r})")
        for name in (
            "prefill_overhead_s",
            "decode_slowdown",
            "batch_wait_s",
            "step_noise",
            "startup_delay",
            "wake_delay",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative (got {getattr(self, name)!r})")
        if self.max_num_seqs < 1 or self.kv_cache_tokens < 1:
            raise ValueError("max_num_seqs and kv_cache_tokens must be at least 1")
        if self.max_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_batched_tokens ({self.max_batched_tokens}) must be at least "
                f"max_num_seqs ({self.max_num_seqs})"
            )


_NAMES = tuple(f.name for f in fields(EngineTiming))


def _settings_defaults() -> dict[str, Any]:
    """The sim-engine's own defaults for the fields the simulator uses."""
    values: dict[str, Any] = {}
    for name in _NAMES:
        info = SimEngineSettings.model_fields.get(name)
        if info is not None and name != "startup_delay":
            values[name] = info.get_default(call_default_factory=True)
    return values


def engine_timing(profile: str | None = None, **overrides: Any) -> EngineTiming:
    """The timing of ``profile`` (a name or a ``.json`` path; None: the defaults) with
    ``overrides`` (None values ignored) on top. Raises ``ValueError`` (``ProfileError``
    included) on an unknown profile or a bad value."""
    values = _settings_defaults()
    if profile:
        values.update((key, value) for key, value in load_profile(profile).items() if key in _NAMES)
    unknown = sorted(set(overrides) - set(_NAMES))
    if unknown:
        raise ValueError(f"unknown timing fields: {', '.join(unknown)}")
    values.update((key, value) for key, value in overrides.items() if value is not None)
    return EngineTiming(**values)
