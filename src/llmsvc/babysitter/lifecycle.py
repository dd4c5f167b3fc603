"""The supervisor's vocabulary: states, exit records and the restart policy.

States::

    starting ──ready──▶ ready ◀──health ok── unhealthy
       ▲                  │  └──health fails──▶ │ (3 in a row: hung, killed)
       │                  ▼                     ▼
    restarting ◀──── engine exited / killed ────┘
       │ too many failures in the window
       ▼
    failed ──POST /restart──▶ starting
    ready ──POST /drain──▶ draining ──▶ drained ──POST /restart──▶ starting
    any ──SIGTERM──▶ stopping

A later issue adds crash classification (OOMKilled, CUDA errors) to
:class:`ExitRecord` and a ``crash-loop`` state; the policy stays here.
"""

from __future__ import annotations

import random
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

BACKOFF_CAP = 60.0
JITTER = 0.2  # ± fraction of the delay


class State(StrEnum):
    STARTING = "starting"
    READY = "ready"
    UNHEALTHY = "unhealthy"
    RESTARTING = "restarting"
    DRAINING = "draining"
    DRAINED = "drained"
    STOPPING = "stopping"
    FAILED = "failed"


class Reason(StrEnum):
    """Why an engine process ended (``last_exit.reason``, ``restarts_total{reason}``)."""

    CRASHED = "crashed"  # exited on its own, any code or signal
    HUNG = "hung"  # failed its health checks while alive; killed
    STARTUP_TIMEOUT = "startup-timeout"  # not ready within --startup-timeout; killed
    SPAWN_FAILED = "spawn-failed"  # could not be executed at all
    REQUESTED = "requested"  # POST /restart
    STOPPED = "stopped"  # the babysitter shut down


FAILURES = frozenset({Reason.CRASHED, Reason.HUNG, Reason.STARTUP_TIMEOUT, Reason.SPAWN_FAILED})


@dataclass(frozen=True)
class ExitRecord:
    """How the last engine process ended."""

    code: int | None
    signal: int | None
    reason: Reason
    detail: str = ""
    at: float = 0.0  # wall-clock time

    @classmethod
    def from_returncode(
        cls, returncode: int | None, reason: Reason, detail: str = ""
    ) -> ExitRecord:
        """``returncode`` as asyncio reports it: negative for a signal."""
        if returncode is not None and returncode < 0:
            return cls(None, -returncode, reason, detail or _signal_name(-returncode), time.time())
        return cls(returncode, None, reason, detail, time.time())

    def exit_code(self) -> int:
        """A shell-style exit status: 128 + signal when killed by a signal."""
        if self.signal is not None:
            return 128 + self.signal
        return self.code if self.code is not None else -1

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["reason"] = str(self.reason)
        return data


def _signal_name(number: int) -> str:
    try:
        return f"killed by {signal.Signals(number).name}"
    except ValueError:
        return f"killed by signal {number}"


def backoff_delay(
    failures: int,
    base: float,
    *,
    cap: float = BACKOFF_CAP,
    rand: Callable[[], float] = random.random,
) -> float:
    """Delay before restart number ``failures`` (1-based): base·2ⁿ⁻¹, capped, ±20% jitter."""
    if failures <= 0 or base <= 0:
        return 0.0
    delay = min(cap, base * 2.0 ** min(failures - 1, 32))
    return min(cap, delay * (1 + JITTER * (2 * rand() - 1)))


class RestartBudget:
    """At most ``limit`` failures within ``window`` seconds; beyond that: failed."""

    def __init__(
        self, *, limit: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limit = limit
        self._window = window
        self._clock = clock
        self._failures: deque[float] = deque()

    def record_failure(self) -> bool:
        """Count one failure; True while another restart is allowed."""
        now = self._clock()
        self._failures.append(now)
        while self._failures and self._failures[0] < now - self._window:
            self._failures.popleft()
        return len(self._failures) <= self._limit

    def reset(self) -> None:
        self._failures.clear()
