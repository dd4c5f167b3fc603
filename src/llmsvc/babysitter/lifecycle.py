"""The supervisor's vocabulary: states, exit reasons, exit records and the restart policy.

States::

    starting ──ready──▶ ready ◀──health ok── unhealthy
       ▲                  │  └──health fails──▶ │ (N in a row: Hung, killed)
       │                  ▼                     ▼
    restarting ◀──── engine ended / killed ─────┘
       │ more than --max-restarts failures within --restart-window
       ▼
    crash-loop ──POST /restart──▶ starting
    failed (BadArguments, SpawnFailed: a restart cannot help) ──POST /restart──▶ starting
    ready ──POST /drain──▶ draining ──▶ drained ──POST /restart──▶ starting
    ready ──POST /stop──▶ draining ──▶ drained (engine stopped, GPU free) ──POST /restart──▶ …
    ready ──POST /model──▶ swapping ──▶ starting (the new model; rolled back on failure)
    ready ──idle for --idle-timeout──▶ standby ──POST /wake──▶ waking ──▶ ready
    any ──SIGTERM──▶ stopping
    crash-loop, failed ──--exit-on-crash-loop──▶ stopping (as on SIGTERM, then exit 1)

The reasons (:class:`~llmsvc.core.names.Reason`, shared with the operator, which
copies them into an InferenceService's conditions) are a small stable set;
``docs/engines.md`` documents them.
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

# Re-exported: the babysitter's modules take their whole vocabulary from here.
from llmsvc.core.names import INTENDED as INTENDED
from llmsvc.core.names import Reason as Reason

BACKOFF_CAP = 60.0
JITTER = 0.2  # ± fraction of the delay
MIN_DELAY = 0.05  # never a busy loop, even with --restart-backoff 0


class State(StrEnum):
    STARTING = "starting"
    READY = "ready"
    UNHEALTHY = "unhealthy"
    RESTARTING = "restarting"
    DRAINING = "draining"
    DRAINED = "drained"
    SWAPPING = "swapping"
    STOPPING = "stopping"
    CRASH_LOOP = "crash-loop"
    FAILED = "failed"
    STANDBY = "standby"  # idle: engine stopped or asleep (--idle-timeout, --standby)
    WAKING = "waking"  # POST /wake: relaunching or waking it up


# Ends that a restart cannot mend: the state becomes ``failed`` until POST /restart or /model.
PERMANENT = frozenset({Reason.BAD_ARGUMENTS, Reason.SPAWN_FAILED})


@dataclass(frozen=True)
class ExitRecord:
    """How the last engine process ended (``/status`` ``last_exit``)."""

    code: int | None
    signal: int | None
    reason: Reason
    detail: str = ""
    at: float = 0.0  # wall-clock time
    model: str | None = None  # the model it served

    @classmethod
    def from_returncode(
        cls, returncode: int | None, reason: Reason, detail: str = "", model: str | None = None
    ) -> ExitRecord:
        """``returncode`` as asyncio reports it: negative for a signal."""
        if returncode is not None and returncode < 0:
            detail = detail or f"killed by {signal_name(-returncode)}"
            return cls(None, -returncode, reason, detail, time.time(), model)
        return cls(returncode, None, reason, detail, time.time(), model)

    @property
    def failure(self) -> bool:
        return self.reason not in INTENDED

    def exit_code(self) -> int:
        """A shell-style exit status: 128 + signal when killed by a signal."""
        if self.signal is not None:
            return 128 + self.signal
        return self.code if self.code is not None else -1

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["reason"] = str(self.reason)
        return data


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def backoff_delay(
    failures: int,
    base: float,
    *,
    cap: float = BACKOFF_CAP,
    rand: Callable[[], float] = random.random,
) -> float:
    """Delay before restart number ``failures`` (1-based): base·2ⁿ⁻¹, capped, ±20% jitter."""
    if failures <= 0:
        return MIN_DELAY
    delay = min(cap, base * 2.0 ** min(failures - 1, 32))
    return max(MIN_DELAY, min(cap, delay * (1 + JITTER * (2 * rand() - 1))))


class RestartBudget:
    """At most ``limit`` failures within ``window`` seconds; one more is a crash loop."""

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


@dataclass(frozen=True)
class Verdict:
    """What follows a failed life: ``restarting`` after ``delay`` seconds, or restarts stop
    (``failed``, ``crash-loop``) for the reason in ``why``."""

    state: State
    delay: float = 0.0
    why: str = ""


class RestartPolicy:
    """The restart policy: after each failed life, whether and when the engine starts again."""

    def __init__(self, *, limit: int, window: float, backoff: float, stable_uptime: float) -> None:
        self._budget = RestartBudget(limit=limit, window=window)
        self._backoff = backoff
        self._stable_uptime = stable_uptime
        self.failures = 0  # consecutive; reset after --stable-uptime of readiness

    def reset(self) -> None:
        """``POST /restart``: a fresh budget, and the backoff starts over."""
        self._budget.reset()
        self.failures = 0

    def ended(self, ready_for: float | None) -> None:
        """A life ended after ``ready_for`` seconds of readiness (None: never ready)."""
        if ready_for is not None and ready_for >= self._stable_uptime:
            self.failures = 0  # it ran long enough: backoff starts over

    def verdict(self, record: ExitRecord) -> Verdict:
        """Count the failure ``record`` and say what follows it."""
        self.failures += 1
        if record.reason in PERMANENT:
            return Verdict(State.FAILED, why="the engine cannot start")
        if not self._budget.record_failure():
            return Verdict(State.CRASH_LOOP, why=f"crash loop: {self.failures} failures in a row")
        return Verdict(State.RESTARTING, delay=backoff_delay(self.failures, self._backoff))
