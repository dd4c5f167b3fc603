"""Standby: an idle engine stopped or put to sleep until ``POST /wake`` (``--idle-timeout``).

Scale to zero on bare metal. The babysitter reads the engine's own metrics at
every health check (:func:`scrape_load`); :class:`IdleClock` says when nothing
has run or waited and the request counters have not moved for
``--idle-timeout`` seconds. The supervisor then stops the engine (``--standby
stop``: the GPU is free, a wake is a full start) or POSTs vLLM's ``/sleep``
(``--standby sleep``: a wake is ``/wake_up``), and keeps the engine's record
registered with status ``standby`` so that routers know the model and hold its
requests while they wake it.

Metrics that cannot be read (a failed scrape, no known series) mean *not
idle*: an engine the babysitter cannot see is never put away.

:class:`GpuLock` makes models that share a GPU take turns: a babysitter with
``--idle-timeout`` and ``--gpus`` holds an exclusive ``flock`` on one file per
GPU while its engine runs (awake), and a start or a wake waits for it, so two
such engines are never up on one GPU at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from llmsvc.babysitter.probes import IN_FLIGHT_METRICS

log = logging.getLogger("llmsvc.babysitter.standby")

ACTIVITY_COUNTERS = frozenset(
    {
        "vllm:request_success_total",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "sglang:prompt_tokens_total",
        "sglang:generation_tokens_total",
        "llamacpp:prompt_tokens_total",
        "llamacpp:tokens_predicted_total",
        "llamacpp:n_decode_total",
    }
)
"""Counters that move with every request, so a request that came and went between two
scrapes still counts as activity."""

_ERRORS = (TimeoutError, aiohttp.ClientError, OSError, UnicodeDecodeError)


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """What one scrape of the engine's metrics says of its work."""

    in_flight: int  # running + waiting
    activity: float  # the sum of the activity counters


def read_load(text: str) -> EngineLoad | None:
    """The load in a Prometheus page; None without both a gauge and a counter we know."""
    in_flight: float | None = None
    activity: float | None = None
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in IN_FLIGHT_METRICS:
                    in_flight = (in_flight or 0.0) + sample.value
                elif sample.name in ACTIVITY_COUNTERS:
                    activity = (activity or 0.0) + sample.value
    except ValueError:
        return None
    if in_flight is None or activity is None:
        return None
    return EngineLoad(in_flight=int(in_flight), activity=activity)


async def scrape_load(
    session: aiohttp.ClientSession, base: str, *, timeout: float
) -> EngineLoad | None:
    """The engine's load from its ``/metrics``; None when that cannot be read."""
    try:
        async with session.get(
            base + "/metrics", timeout=aiohttp.ClientTimeout(total=timeout)
        ) as resp:
            if resp.status != 200:
                return None
            text = (await resp.read()).decode(errors="replace")
    except _ERRORS:
        return None
    return read_load(text)


class IdleClock:
    """Idle for ``timeout`` seconds: nothing in flight and the counters still since then."""

    def __init__(self, timeout: float, *, clock: Callable[[], float]) -> None:
        self.timeout = timeout
        self._clock = clock
        self._since: float | None = None  # when the engine was last seen busy (or unknown)
        self._activity: float | None = None
        self._blind = False  # the last scrape could not be read (logged once per episode)

    def reset(self) -> None:
        """Start counting again (the engine just started, woke, or refused to sleep)."""
        self._since = self._clock()
        self._activity = None

    def observe(self, load: EngineLoad | None) -> bool:
        """One scrape's result; True once the engine has been idle for the timeout."""
        now = self._clock()
        if load is None:
            if not self._blind:
                log.warning("cannot read the engine's load from its /metrics: not idle")
            self._blind = True
            self._since, self._activity = now, None
            return False
        self._blind = False
        if self._since is None or load.in_flight > 0 or load.activity != self._activity:
            self._since, self._activity = now, load.activity
            return False
        return now - self._since >= self.timeout

    def idle_for(self) -> float:
        return 0.0 if self._since is None else self._clock() - self._since


async def post_engine(
    session: aiohttp.ClientSession, url: str, *, timeout: float
) -> tuple[int | None, str]:
    """POST ``url`` (``/sleep``, ``/wake_up``): its status and the start of its body."""
    try:
        async with session.post(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            body = await resp.read()
            return resp.status, body[:300].decode(errors="replace")
    except _ERRORS as exc:
        return None, str(exc) or type(exc).__name__


def default_lock_dir() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "llmsvc"
    return Path(f"/tmp/llmsvc-{os.getuid()}")


class GpuLock:
    """Exclusive ``flock`` s on ``<dir>/gpu-<index>.lock``, one per GPU, taken all or none."""

    def __init__(self, directory: Path, gpus: Sequence[str], *, owner: str) -> None:
        self.directory = directory
        self.gpus = sorted(dict.fromkeys(gpus))
        self.owner = owner
        self._files: list[IO[str]] = []

    @property
    def held(self) -> bool:
        return bool(self._files)

    def path(self, gpu: str) -> Path:
        return self.directory / f"gpu-{gpu}.lock"

    def try_acquire(self) -> bool:
        """Take every GPU's lock now, or none of them; True when held."""
        if self.held:
            return True
        self.directory.mkdir(parents=True, exist_ok=True)
        taken: list[IO[str]] = []
        for gpu in self.gpus:
            handle = open(self.path(gpu), "a+")  # noqa: SIM115 - kept open while held
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                for other in taken:
                    other.close()  # closing drops its flock
                return False
            taken.append(handle)
        for held in taken:
            held.truncate(0)
            held.write(self.owner + "\n")
            held.flush()
        self._files = taken
        return True

    def holder(self) -> str:
        """Who holds the first busy GPU, as its holder wrote it (informational)."""
        for gpu in self.gpus:
            with contextlib.suppress(OSError):
                text = self.path(gpu).read_text().strip()
                if text:
                    return f"GPU {gpu} ({text})"
        return "GPU " + ",".join(self.gpus)

    def release(self) -> None:
        files, self._files = self._files, []
        for handle in files:
            with contextlib.suppress(OSError):
                handle.truncate(0)
            handle.close()
