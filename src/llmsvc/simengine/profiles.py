"""Named timing profiles of the simulated engine: JSON files shipped in the package.

``llmsvc sim-engine --profile NAME`` reads ``profiles/NAME.json``: its
``settings`` object gives defaults for the timing fields (flags and
``LLMSVC_*`` variables still win); the rest of the file (``source``, ``fit``)
says where the numbers come from. ``llmsvc sim-engine fit`` writes such files.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

PROFILE_DIR = Path(__file__).with_name("profiles")

TIMING_FIELDS = frozenset(
    {
        "chars_per_token",
        "max_num_seqs",
        "kv_cache_tokens",
        "prefill_tokens_per_s",
        "prefill_overhead_s",
        "decode_tokens_per_s",
        "decode_slowdown",
        "scheduler",
        "max_batched_tokens",
        "batch_wait_s",
        "block_size",
        "step_noise",
        "prefix_cache_tokens",
        "wake_delay",
    }
)
"""The settings a profile may set: how the engine's time behaves, not where it listens."""


class ProfileError(ValueError):
    """An unknown profile, or a file that is not a profile."""


def available_profiles() -> list[str]:
    return sorted(path.stem for path in PROFILE_DIR.glob("*.json"))


def profile_path(name: str) -> Path:
    """The file of a named profile, or a path given as such (``./mine.json``)."""
    if name.endswith(".json"):
        return Path(name)
    if name not in available_profiles():
        known = ", ".join(available_profiles()) or "none"
        raise ProfileError(f"unknown profile {name!r} (known: {known})")
    return PROFILE_DIR / f"{name}.json"


def load_profile(name: str) -> dict[str, Any]:
    """The ``settings`` of a profile, checked to hold timing fields only."""
    path = profile_path(name)
    try:
        document = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ProfileError(f"cannot read profile {str(path)!r}: {exc}") from None
    settings = document.get("settings") if isinstance(document, dict) else None
    if not isinstance(settings, dict):
        raise ProfileError(f"profile {str(path)!r} has no 'settings' object")
    unknown = sorted(set(settings) - TIMING_FIELDS)
    if unknown:
        raise ProfileError(f"profile {str(path)!r} sets non-timing fields: {', '.join(unknown)}")
    return settings


def write_profile(path: Path, document: Mapping[str, Any]) -> None:
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
