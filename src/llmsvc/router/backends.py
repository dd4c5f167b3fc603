"""The router's backends and their state; pure (the clock is passed in).

A :class:`Backend` is one ``openai-api`` service as the router sees it: its
record, where the record came from, the registry's and the router's own view
of its health, its nginx-style passive failure state, its outlier state
(``outliers``), its recent first-byte times (``latency``), the requests waiting for
its first byte and its counters. The
:class:`BackendPool` merges the static records with the registry's view and
keeps each backend's state across refreshes for as long as it stays.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from llmsvc.core.durations import parse_duration
from llmsvc.core.records import BABYSITTER, INFERENCE_SERVICE, OPENAI_API, ServiceRecord
from llmsvc.router.candidates import Eligible
from llmsvc.router.latency import LatencyWindow
from llmsvc.router.loadscore import EngineLoad
from llmsvc.router.outliers import OutlierState

Source = Literal["static", "registry"]


@dataclass(slots=True)
class PassiveHealth:
    """nginx's ``max_fails``/``fail_timeout``.

    ``max_fails`` failures within ``fail_timeout`` seconds take the backend out
    for ``fail_timeout`` seconds. After that it is on probation: its next
    request decides, a failure takes it out again at once, a success clears
    it. ``max_fails == 0`` disables the mechanism.
    """

    max_fails: int
    fail_timeout: float
    failures: deque[float] = field(default_factory=deque)
    down_until: float = 0.0
    probation: bool = False

    def available(self, now: float) -> bool:
        return now >= self.down_until

    def record_failure(self, now: float) -> bool:
        """Count a failure; True when it takes the backend out."""
        if self.max_fails <= 0 or now < self.down_until:
            return False  # disabled, or already out (a straggler of the same burst)
        if self.probation:
            return self._take_out(now)
        horizon = now - self.fail_timeout
        while self.failures and self.failures[0] <= horizon:
            self.failures.popleft()
        self.failures.append(now)
        if len(self.failures) >= self.max_fails:
            return self._take_out(now)
        return False

    def record_success(self, now: float) -> None:
        if self.probation and now >= self.down_until:
            self.probation = False
            self.down_until = 0.0

    def end_take_out(self, now: float) -> bool:
        """End a take-out early, leaving the backend on probation; True if it was out."""
        if now >= self.down_until:
            return False
        self.down_until = now
        return True

    def reset(self) -> None:
        """Forget past failures: the service is known to be new (restarted, re-registered)."""
        self.failures.clear()
        self.down_until = 0.0
        self.probation = False

    def _take_out(self, now: float) -> bool:
        self.failures.clear()
        self.down_until = now + self.fail_timeout
        self.probation = True
        return True

    def recent_failures(self, now: float) -> int:
        horizon = now - self.fail_timeout
        return sum(1 for t in self.failures if t > horizon)


class Waiter(Protocol):
    """A request on a backend that an ejection acts on: one waiting for the first byte goes
    elsewhere, a stream that has stalled there is cut."""

    def rescue(self) -> None:
        """The backend was ejected as hung: stop waiting on it (if stalled)."""
        ...


@dataclass(slots=True)
class BackendStats:
    requests: int = 0
    errors: int = 0
    response_time_sum: float = 0.0
    ttft_sum: float = 0.0
    ttft_count: int = 0

    def as_dict(self) -> dict[str, Any]:
        done = self.requests
        return {
            "requests": self.requests,
            "errors": self.errors,
            "mean_response_time_s": round(self.response_time_sum / done, 6) if done else None,
            "mean_ttft_s": round(self.ttft_sum / self.ttft_count, 6) if self.ttft_count else None,
        }


@dataclass(slots=True, eq=False)
class Backend:
    """One routable service and everything the router knows about it."""

    record: ServiceRecord
    source: Source
    passive: PassiveHealth
    active_ok: bool = True
    checked_at: float | None = None
    in_flight: int = 0
    load: EngineLoad | None = None  # the engine's last scraped load (least_load)
    stats: BackendStats = field(default_factory=BackendStats)
    models: frozenset[str] = frozenset()
    url: str = ""
    outlier: OutlierState = field(default_factory=OutlierState)
    ttfb_stream: LatencyWindow = field(default_factory=LatencyWindow)  # to the first chunk
    ttfb_plain: LatencyWindow = field(default_factory=LatencyWindow)  # to the headers
    last_seen: float = -math.inf  # when a byte of any answer last came from it
    waiting: set[Waiter] = field(default_factory=set)  # requests before their first byte
    streams: set[Waiter] = field(default_factory=set)  # streams relaying from it
    probing: bool = False  # a suspicion probe is in flight
    probed_at: float = -math.inf  # when the last suspicion probe started

    def __post_init__(self) -> None:
        self.refresh(self.record, self.source)

    def refresh(self, record: ServiceRecord, source: Source) -> None:
        old = self.record
        if old is not record and (
            record.registered_at != old.registered_at or (record.healthy and not old.healthy)
        ):
            # Registered anew or healthy again (a restarted engine): the failures that took
            # it out belong to the process that died, so it takes traffic at once.
            self.passive.reset()
            self.outlier.reset()
            self.ttfb_stream.clear()
            self.ttfb_plain.clear()
            if old.status == "standby":
                # Woken: its babysitter saw the engine answer, as for a new record; a check
                # failed while it went to sleep must not keep the held requests waiting.
                self.active_ok = True
        self.record = record
        self.source = source
        if self.standby:
            self.load = None  # an engine in standby holds no KV cache, runs nothing
        self.models = frozenset(record.models)
        # Only the origin: every upstream URL is this plus the client's path (issue 11).
        self.url = record.origin()

    def record_check(self, ok: bool, now: float) -> bool:
        """An active check's result; True when the backend's eligibility may have changed.

        A pass also ends a passive take-out: the check has just shown that the backend
        answers (a restarted engine takes traffic within one health interval, not after
        ``--fail-timeout``). A backend that fails requests but passes checks gets one
        request per interval, on probation: its next failure takes it out again.
        """
        changed = ok != self.active_ok
        if ok and not self.active_ok:
            # Back from a failed check (restarted, or no longer hung): a new life, so
            # what made it an outlier before belongs to the old one.
            self.outlier.reset()
        self.active_ok = ok
        self.checked_at = now
        if ok and self.passive.end_take_out(now):
            changed = True
        return changed

    def rescue_waiting(self) -> int:
        """Send every request waiting for this backend's first byte elsewhere, and cut its
        stalled streams; how many were waiting."""
        waiting = list(self.waiting)
        for waiter in [*waiting, *self.streams]:
            waiter.rescue()
        return len(waiting)

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def weight(self) -> int:
        return self.record.weight

    @property
    def registry_healthy(self) -> bool:
        return self.source == "static" or self.record.healthy

    @property
    def standby(self) -> bool:
        """Stopped or asleep by its babysitter (scale to zero on bare metal): known, never
        eligible, and neither health-checked nor scraped (it would only fail)."""
        return self.source == "registry" and self.record.status == "standby"

    def healthy(self, now: float) -> bool:
        """Healthy by the registry, the router's active check, passive and outlier state."""
        return (
            self.registry_healthy
            and self.active_ok
            and self.passive.available(now)
            and self.outlier.available(now)
        )

    def out_until(self) -> float:
        """When a passive take-out or outlier ejection ends (it comes back by itself)."""
        return max(self.passive.down_until, self.outlier.ejected_until)

    def view(self, now: float) -> dict[str, Any]:
        """The backend as ``GET /services`` shows it."""
        return {
            "name": self.name,
            "url": self.url,
            "source": self.source,
            "eligible": self.healthy(now),
            "registry_healthy": self.registry_healthy,
            "active_check_ok": self.active_ok,
            "active_check_age_s": (
                None if self.checked_at is None else round(now - self.checked_at, 3)
            ),
            "passive": {
                "available": self.passive.available(now),
                "recent_failures": self.passive.recent_failures(now),
                "down_for_s": round(max(0.0, self.passive.down_until - now), 3),
            },
            "outlier": {
                "available": self.outlier.available(now),
                "ejected_for_s": round(max(0.0, self.outlier.ejected_until - now), 3),
                "ejections": self.outlier.times,
                "reason": self.outlier.reason,
                "consecutive_failures": self.outlier.consecutive,
            },
            "first_byte": {
                "waiting": len(self.waiting),
                "stream_p99_s": _rounded(self.ttfb_stream.p99()),
                "plain_p99_s": _rounded(self.ttfb_plain.p99()),
            },
            "in_flight": self.in_flight,
            "load": None if self.load is None else self.load.view(now),
            "record": self.record.model_dump(mode="json"),
        }


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 6)


@dataclass(slots=True)
class _CachedEligible:
    health_version: int  # the pool's _health_version it was computed at
    until: float  # when a passive take-out of one of the model's backends ends
    weights: tuple[int, ...]  # of the backends, when it was computed
    eligible: Eligible[Backend]


class BackendPool:
    """Static and registry backends by name; registry records win on a name clash."""

    def __init__(self, *, max_fails: int, fail_timeout: float) -> None:
        self._max_fails = max_fails
        self._fail_timeout = fail_timeout
        self._static: dict[str, ServiceRecord] = {}
        self._registry: dict[str, ServiceRecord] = {}
        self._named: frozenset[str] = frozenset()  # models babysitters name (maybe not up yet)
        self._sitters: list[ServiceRecord] = []  # the babysitter records (their start times)
        self._services: list[ServiceRecord] = []  # inference-service records (scale from 0)
        self._backends: dict[str, Backend] = {}
        self._removed: set[str] = set()
        self._by_model: dict[str, list[Backend]] = {}  # model -> backends listing it, in order
        self.version = 0  # grows on every refresh: the set of backends may have changed
        # Eligibility is cached per model and recomputed only after a health change (or
        # when a passive take-out ends), so that a pick costs the same at 2 or 1,000 backends.
        self._health_version = 0
        self._eligible: dict[str, _CachedEligible] = {}
        self._eligible_versions = 0  # the version of the newest eligible list, any model
        # Called after every refresh or health change (flow control: held requests look
        # again, queued ones may have a slot): an event, never a poll.
        self._listeners: list[Callable[[], None]] = []

    def __iter__(self) -> Iterator[Backend]:
        return iter(self._backends.values())

    def __len__(self) -> int:
        return len(self._backends)

    def get(self, name: str) -> Backend | None:
        return self._backends.get(name)

    def set_static(self, records: Iterable[ServiceRecord]) -> None:
        self._static = {r.name: r for r in records if r.type == OPENAI_API}
        self._rebuild()

    def set_registry(self, records: Iterable[ServiceRecord]) -> None:
        """The registry's records, of every type and state: ``openai-api`` ones are the
        backends; a babysitter's ``metadata.model_name`` makes its model known (it may be
        loading, its engine not yet registered), and so do an ``inference-service``
        record's ``metadata.models`` (a Kubernetes Service with no ready endpoint)."""
        records = list(records)
        self._registry = {r.name: r for r in records if r.type == OPENAI_API}
        self._sitters = [r for r in records if r.type == BABYSITTER]
        self._services = [r for r in records if r.type == INFERENCE_SERVICE]
        self._named = frozenset(
            name
            for r in records
            if r.type == BABYSITTER and isinstance(name := r.metadata.get("model_name"), str)
        ) | frozenset(
            m
            for r in records
            if r.type == INFERENCE_SERVICE
            for m in r.models
            if isinstance(m, str)
        )
        self._rebuild()

    def _rebuild(self) -> None:
        merged: dict[str, tuple[ServiceRecord, Source]] = {
            name: (record, "static") for name, record in self._static.items()
        }
        merged.update((name, (record, "registry")) for name, record in self._registry.items())
        backends: dict[str, Backend] = {}
        for name, (record, source) in merged.items():
            backend = self._backends.get(name)
            if backend is not None and backend.url == record.origin():
                backend.refresh(record, source)
                backend.passive.max_fails, backend.passive.fail_timeout = self._limits(record)
            else:
                backend = Backend(record=record, source=source, passive=self._new_passive(record))
            backends[name] = backend
        self._removed = set(self._backends) - set(backends)
        self._backends = backends
        by_model: dict[str, list[Backend]] = {}
        for backend in backends.values():
            for model in backend.models:
                by_model.setdefault(model, []).append(backend)
        self._by_model = by_model
        self.version += 1
        self.health_changed()

    def sitters(self, model: str) -> list[ServiceRecord]:
        """The babysitter records that name ``model`` (a held request's estimate)."""
        return [r for r in self._sitters if r.metadata.get("model_name") == model]

    def inference_services(self, model: str) -> list[ServiceRecord]:
        """The ``inference-service`` records that list ``model`` (Kubernetes, no ready pod:
        a held request's estimate, from the operator's cold-start annotations)."""
        return [r for r in self._services if model in r.models]

    def removed_names(self) -> set[str]:
        """Names the last refresh dropped (strategies forget their state)."""
        return self._removed

    def _new_passive(self, record: ServiceRecord) -> PassiveHealth:
        max_fails, fail_timeout = self._limits(record)
        return PassiveHealth(max_fails=max_fails, fail_timeout=fail_timeout)

    def _limits(self, record: ServiceRecord) -> tuple[int, float]:
        """nginx's per-server ``max_fails``/``fail_timeout``: the record's
        ``metadata.max_fails``/``metadata.fail_timeout`` (seconds or ``"30s"``) where it
        gives valid ones, else the router's ``--max-fails``/``--fail-timeout``."""
        fails = record.metadata.get("max_fails")
        if isinstance(fails, bool) or not isinstance(fails, int) or fails < 0:
            fails = self._max_fails
        try:
            timeout = parse_duration(record.metadata.get("fail_timeout"))
        except ValueError:
            timeout = self._fail_timeout
        return fails, (timeout if timeout > 0 else self._fail_timeout)

    def members(self, model: str) -> Sequence[Backend]:
        """Every backend listing ``model``, eligible or not, in a stable order (hash rings)."""
        return self._by_model.get(model, ())

    def health_changed(self) -> None:
        """A backend's eligibility may have changed: recompute the eligible lists, and tell
        the listeners (:meth:`listen`)."""
        self._health_version += 1
        for listener in self._listeners:
            listener()

    def listen(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after every refresh and every health change from now on."""
        self._listeners.append(listener)

    def next_return(self, model: str, now: float) -> float:
        """When the first of ``model``'s backends out for passive failures or as an outlier
        comes back by itself (inf if none is out): no event marks that moment."""
        return min(
            (t for b in self._by_model.get(model, ()) if (t := b.out_until()) > now),
            default=math.inf,
        )

    def eligible(self, model: str, now: float) -> Eligible[Backend]:
        """The backends that may take a request for ``model`` now, in a stable order.

        Its version changes when the list does (a backend joined, left or changed its
        weight, its eligibility changed), not otherwise: strategies cache under it.
        """
        cached = self._eligible.get(model)
        if (
            cached is not None
            and cached.health_version == self._health_version
            and now < cached.until
        ):
            return cached.eligible
        backends = tuple(b for b in self._by_model.get(model, ()) if b.healthy(now))
        # A backend out for passive failures or as an outlier comes back by itself.
        until = min(
            (t for b in self._by_model.get(model, ()) if (t := b.out_until()) > now),
            default=math.inf,
        )
        weights = tuple(b.weight for b in backends)
        if (
            cached is not None
            and cached.eligible.backends == backends
            and cached.weights == weights
        ):
            eligible = cached.eligible  # recomputed, unchanged: strategies keep their caches
        else:
            self._eligible_versions += 1
            eligible = Eligible(backends, version=self._eligible_versions)
        self._eligible[model] = _CachedEligible(self._health_version, until, weights, eligible)
        return eligible

    def models(self) -> list[str]:
        """Every model some backend lists, healthy or not."""
        return list(self._by_model)

    def knows(self, model: str) -> bool:
        """Whether ``model`` is known: some backend lists it, in any state (healthy,
        unhealthy, taken out, ejected; static or registry), or a babysitter names it.
        An unknown model is a 404, a known one with nothing healthy a 503; the known
        models also bound the ``model_name`` metric label."""
        return model in self._by_model or model in self._named

    def known_models(self) -> list[str]:
        """Every known model (:meth:`knows`), each once, in a stable order: what
        ``GET /v1/models`` lists."""
        return sorted(self._by_model.keys() | self._named)

    def healthy_models(self, now: float) -> list[str]:
        """Models of the healthy backends, each once, in a stable order."""
        seen: dict[str, None] = {}
        for backend in self._backends.values():
            if backend.healthy(now):
                seen.update(dict.fromkeys(sorted(backend.models)))
        return list(seen)
