"""How many requests an engine runs at once, from its own settings: ``max_concurrency``.

The router gives each backend that many slots and queues what does not fit
(``docs/flow-control.md``), so the babysitter advertises the engine's own limit in
the engine record's metadata wherever it can know it, instead of every
operator having to repeat it as ``--backend-concurrency``:

- vLLM: ``--max-num-seqs N`` (its default depends on the version and the GPU:
  unknown here, so absent);
- SGLang: ``--max-running-requests N`` (default computed from memory: absent);
- llama.cpp: ``-np N`` / ``--parallel N`` (or ``LLAMA_ARG_N_PARALLEL``); without
  them (or with ``-1``, "auto") the server's ``GET /props`` ``total_slots``, read
  once the engine is ready (:func:`slots_from_props`);
- the simulated engine: ``--max-num-seqs N`` (or ``LLMSVC_MAX_NUM_SEQS``, or its
  ``--profile``'s), else its default, :data:`SIM_DEFAULT_MAX_NUM_SEQS`;
- InfiniLM, InfiniLM-Rust, ``--engine command``: no flag says it: absent.

The parsers are pure: the engine's whole command line (the adapter's and the
arguments after ``--``) and the environment it is started with. The last of a
repeated flag wins, as the engines' own argument parsers do.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp

SIM_DEFAULT_MAX_NUM_SEQS = 32
"""``llmsvc sim-engine``'s default ``--max-num-seqs`` (a test keeps it equal to the engine's:
the babysitter may not import the simulated engine)."""
SIM_ENV = "LLMSVC_MAX_NUM_SEQS"
LLAMA_ENV = "LLAMA_ARG_N_PARALLEL"


def flag_value(argv: Sequence[str], *names: str) -> str | None:
    """The value of the last of ``names`` in ``argv`` (``--flag V`` or ``--flag=V``), or None."""
    found: str | None = None
    for i, arg in enumerate(argv):
        if arg in names and i + 1 < len(argv):
            found = argv[i + 1]
        else:
            name, eq, value = arg.partition("=")
            if eq and name in names:
                found = value
    return found


def positive(value: str | None) -> int | None:
    """``value`` as an int >= 1, else None (absent, auto, malformed: the engine decides)."""
    if value is None:
        return None
    try:
        number = int(value.strip())
    except ValueError:
        return None
    return number if number >= 1 else None


def vllm_slots(argv: Sequence[str], env: Mapping[str, str]) -> int | None:
    return positive(flag_value(argv, "--max-num-seqs"))


def sglang_slots(argv: Sequence[str], env: Mapping[str, str]) -> int | None:
    return positive(flag_value(argv, "--max-running-requests"))


def llama_cpp_slots(argv: Sequence[str], env: Mapping[str, str]) -> int | None:
    """``-np``/``--parallel``; a flag wins over the variable (llama.cpp's order)."""
    value = flag_value(argv, "-np", "--parallel")
    return positive(value if value is not None else env.get(LLAMA_ENV))


def sim_slots(argv: Sequence[str], env: Mapping[str, str]) -> int | None:
    """Flag, then variable, then ``--profile``'s, then the default (the engine's order)."""
    value = flag_value(argv, "--max-num-seqs")
    if value is None:
        value = env.get(SIM_ENV)
    if value is None:
        profile = flag_value(argv, "--profile") or env.get("LLMSVC_PROFILE")
        if profile:
            return _profile_slots(profile)
        return SIM_DEFAULT_MAX_NUM_SEQS
    return positive(value)


def _profile_slots(name: str) -> int | None:
    """A sim profile's ``max_num_seqs`` (a shipped name or a ``.json`` path); its default when
    the profile does not set it; None when it cannot be read (the engine will refuse it)."""
    try:
        if name.endswith(".json"):
            text = Path(name).read_text()
        else:
            text = (resources.files("llmsvc.simengine") / "profiles" / f"{name}.json").read_text()
        settings = json.loads(text).get("settings", {})
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(settings, dict) or "max_num_seqs" not in settings:
        return SIM_DEFAULT_MAX_NUM_SEQS
    value = settings["max_num_seqs"]
    return value if isinstance(value, int) and value >= 1 else None


def _unknown(argv: Sequence[str], env: Mapping[str, str]) -> int | None:
    return None


_Parser = Callable[[Sequence[str], Mapping[str, str]], int | None]

PARSERS: dict[str, _Parser] = {
    "vllm": vllm_slots,
    "sglang": sglang_slots,
    "llama.cpp": llama_cpp_slots,
    "sim": sim_slots,
    "infinilm": _unknown,
    "infinilm-rust": _unknown,
    "command": _unknown,
}

ASKS_PROPS = frozenset({"llama.cpp"})
"""Engines whose slot count, when no flag gives it, is ``GET /props``'s ``total_slots``."""


def max_concurrency(engine: str, argv: Sequence[str], env: Mapping[str, str]) -> int | None:
    """The engine's limit on requests at once from its command line, or None (unknown)."""
    return PARSERS.get(engine, _unknown)(argv, env)


def total_slots(props: Any) -> int | None:
    """``total_slots`` of a llama.cpp ``/props`` answer, when it is an int >= 1."""
    value = props.get("total_slots") if isinstance(props, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None


async def slots_from_props(
    session: aiohttp.ClientSession, base_url: str, *, timeout: float
) -> int | None:
    """llama.cpp's slot count from ``GET /props``; None when it does not answer one."""
    try:
        async with session.get(
            base_url + "/props", timeout=aiohttp.ClientTimeout(total=timeout)
        ) as resp:
            if resp.status != 200:
                return None
            props = await resp.json(content_type=None)
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
        return None
    return total_slots(props)
