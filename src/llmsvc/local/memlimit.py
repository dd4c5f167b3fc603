"""Memory limits for the command ``llmsvc exclusive`` runs.

The seed (``004_*``) asked for ``MemoryMax``/``MemoryHigh`` on its services so that a
model test cannot take the whole host down with it. Where systemd runs, the command
gets them as a transient scope (``systemd-run --scope -p MemoryMax=… -p
MemoryHigh=…``): the kernel's memory cgroup counts what the command and its children
really use, and ``MemoryHigh`` throttles before ``MemoryMax`` kills. Without systemd
the only limit every Linux has is the address space of each process
(``prlimit --as``): coarser (virtual memory, per process, no soft limit), and too
tight for CUDA programs, which reserve far more address space than they use — so
systemd is preferred whenever it is there.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Limiter = Literal["auto", "systemd", "prlimit"]
LIMITERS: tuple[Limiter, ...] = ("auto", "systemd", "prlimit")

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


class LimitError(ValueError):
    """The limits cannot be applied (a bad size, no tool that can apply them)."""


def parse_size(text: str) -> int:
    """Bytes from systemd's size syntax (``24G``, ``512M``, ``1.5G``, ``1048576``; powers
    of 1024, as ``MemoryMax=`` reads them)."""
    match = _SIZE.match(text)
    if match is None:
        raise LimitError(f"{text!r} is not a size (e.g. 24G, 512M, 1048576)")
    size = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if size <= 0:
        raise LimitError(f"{text!r} must be more than 0 bytes")
    return size


@dataclass(frozen=True)
class MemoryLimits:
    """``--memory-max`` and ``--memory-high`` in bytes; None: not limited."""

    max_bytes: int | None = None
    high_bytes: int | None = None

    @property
    def any(self) -> bool:
        return self.max_bytes is not None or self.high_bytes is not None


def systemd_running() -> bool:
    """True where systemd is PID 1 (``/run/systemd/system``) and ``systemd-run`` exists."""
    return Path("/run/systemd/system").is_dir() and shutil.which("systemd-run") is not None


@dataclass(frozen=True)
class Wrapped:
    """The command line to run and what it does about the limits (printed before it runs)."""

    argv: list[str]
    how: str


def wrap(
    argv: list[str],
    limits: MemoryLimits,
    *,
    limiter: Limiter = "auto",
    systemd: bool | None = None,
    unit: str = "llmsvc-exclusive",
) -> Wrapped:
    """``argv`` under ``limits``: a transient systemd scope, else ``prlimit --as``.

    ``systemd`` says whether systemd runs (default: :func:`systemd_running`); a
    ``--user`` scope for anyone but root, whose user manager must have the memory
    controller delegated (the default since systemd 244).
    """
    if not limits.any:
        return Wrapped(argv, "no memory limits (--memory-max, --memory-high)")
    use_systemd = systemd_running() if systemd is None else systemd
    if limiter == "systemd" or (limiter == "auto" and use_systemd):
        if limiter == "systemd" and not use_systemd:
            raise LimitError("--limiter systemd: systemd does not run here (/run/systemd/system)")
        return _systemd(argv, limits, unit=unit)
    return _prlimit(argv, limits)


def _systemd(argv: list[str], limits: MemoryLimits, *, unit: str) -> Wrapped:
    head = ["systemd-run"] + ([] if os.geteuid() == 0 else ["--user"])
    head += ["--scope", "--quiet", "--collect", f"--unit={unit}"]
    props = []
    if limits.max_bytes is not None:
        props.append(f"MemoryMax={limits.max_bytes}")
    if limits.high_bytes is not None:
        props.append(f"MemoryHigh={limits.high_bytes}")
    for prop in props:
        head += ["-p", prop]
    return Wrapped([*head, "--", *argv], f"systemd scope {unit} with {', '.join(props)}")


def _prlimit(argv: list[str], limits: MemoryLimits) -> Wrapped:
    if shutil.which("prlimit") is None:
        raise LimitError("cannot limit memory: neither systemd nor prlimit (util-linux) is here")
    if limits.max_bytes is None:
        raise LimitError(
            "--memory-high needs systemd (a cgroup's soft limit); without systemd only "
            "--memory-max can be applied (prlimit --as)"
        )
    how = f"prlimit --as={limits.max_bytes} (address space per process; no systemd here)"
    if limits.high_bytes is not None:
        how += "; --memory-high ignored: it needs systemd"
    return Wrapped(["prlimit", f"--as={limits.max_bytes}", "--", *argv], how)
