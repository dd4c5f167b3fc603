"""Load-balancing strategies: each picks one backend among the eligible candidates.

The proxy asks a strategy for the request's affinity key once (``key``, None
for strategies that need none), then for a backend among the candidates the
pool found eligible (healthy, serving the model, not yet tried) in a stable
order (``pick``). State is kept per model, so the balancing of one model does
not disturb another's. Per request, no strategy does more than one pass over
the candidates; hash rings are built when the set of backends changes and
read with one ``bisect`` (``hashring``).

| strategy | picks |
| --- | --- |
| ``round_robin`` | nginx's smooth weighted round robin |
| ``least_connections`` | fewest requests in flight per unit of weight |
| ``ip_hash``, ``session`` | the key's backend on a consistent-hash ring |
| ``prefix_affinity`` | the same, with bounded load (Mirrokni et al.) |
| ``least_load`` | lowest score from the engines' own metrics (``loadscore``) |

Requests without a key (no session, an empty prompt) go to least connections.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from llmsvc.router.affinity import (
    ClientAddress,
    KeyFunction,
    PromptPrefix,
    parse_networks,
    session_key,
)
from llmsvc.router.hashring import HashRing, PointCache, key_hash
from llmsvc.router.loadscore import EngineLoad, load_score, max_load_age

if TYPE_CHECKING:
    from aiohttp import web

    from llmsvc.core.wire import RoutingInfo
    from llmsvc.router.settings import RouterSettings


class Peer(Protocol):
    """What a strategy needs to know of a backend."""

    @property
    def name(self) -> str: ...

    @property
    def weight(self) -> int: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def load(self) -> EngineLoad | None: ...


P = TypeVar("P", bound=Peer)


class Members(Protocol):
    """Every backend of a model, eligible or not (the pool): what hash rings are built on."""

    @property
    def version(self) -> int:
        """Grows whenever the set of backends may have changed."""
        ...

    def members(self, model: str) -> Sequence[Peer]: ...


class Strategy(Protocol):
    def key(self, request: web.Request, info: RoutingInfo) -> str | None:
        """The request's affinity key, or None (also for strategies that use none)."""
        ...

    def pick(self, model: str, candidates: Sequence[P], key: str | None = None) -> P:
        """One of ``candidates`` (never empty) for a request for ``model``."""
        ...

    def forget(self, names: set[str]) -> None:
        """Drop the state kept for backends that are gone."""
        ...


class _Keyless:
    """Strategies that route on no property of the request."""

    def key(self, request: web.Request, info: RoutingInfo) -> str | None:
        return None


class SmoothWeightedRoundRobin(_Keyless):
    """nginx's smooth weighted round robin, per model.

    Every pick adds each candidate's weight to its current weight, takes the
    candidate with the largest current weight (the first on a tie) and
    subtracts the total weight from the chosen one. Weights 5, 1, 1 give
    ``a a b a c a a``; equal weights alternate strictly.

    That scan is linear in the number of candidates. The pool hands out the
    same eligible-list object until eligibility changes, so the cycle of
    ``sum(weights) / gcd(weights)`` picks is computed once per list (for equal
    weights it is the list itself) and then walked, one step per request,
    whatever the number of backends. A new eligible list gets its cycle started
    right after the backend picked last, so turns go on across the change; a
    retry's list (the scheduled one without the backends tried) takes the scan
    and leaves the turns alone, as nginx's retries do.
    Weighted cycles too long to simulate take the scan.
    """

    MAX_SCHEDULE_WORK = 200_000  # steps × candidates simulated at most per change (~50 ms)

    def __init__(self) -> None:
        self._current: dict[str, dict[str, int]] = {}
        self._schedules: dict[str, _Schedule] = {}
        self._last: dict[str, str] = {}  # the name picked last, per model
        self._pending: dict[str, Sequence[Peer]] = {}  # the last list taken for a retry's

    def pick(self, model: str, candidates: Sequence[P], key: str | None = None) -> P:
        schedule = self._schedules.get(model)
        if schedule is not None and schedule.candidates is not candidates:
            if schedule.is_retry(candidates) and self._pending.get(model) is not candidates:
                # Most likely a retry's list (the scheduled one without the backends
                # tried): pick by the scan and leave the turns alone. The same list
                # coming again is the new eligible list, and gets its schedule.
                self._pending[model] = candidates
                return self._step(self._state(model), candidates)
            schedule = None
        if schedule is None:
            schedule = self._schedule(model, candidates)
        if schedule is None:
            peer = self._step(self._state(model), candidates)
        else:
            peer = schedule.order[schedule.position]
            schedule.position = (schedule.position + 1) % len(schedule.order)
        self._last[model] = peer.name
        return peer

    def _schedule(self, model: str, candidates: Sequence[P]) -> _Schedule | None:
        weights = [peer.weight for peer in candidates]
        if not weights:
            raise ValueError("no candidates to pick from")
        if len(set(weights)) == 1:
            order = list(candidates)  # equal weights: the cycle is the list itself
        else:
            length = sum(weights) // math.gcd(*weights)
            # Simulating the cycle costs length × candidates steps, once per list.
            if length * len(candidates) > self.MAX_SCHEDULE_WORK:
                return None
            current: dict[str, int] = {}
            order = [self._step(current, candidates) for _ in range(length)]
        last = self._last.get(model)
        names = [peer.name for peer in order]
        position = (names.index(last) + 1) % len(order) if last in names else 0
        schedule = _Schedule(candidates, order, position, {id(c) for c in candidates})
        self._schedules[model] = schedule
        return schedule

    def _state(self, model: str) -> dict[str, int]:
        current = self._current.get(model)
        if current is None:
            current = self._current[model] = {}
        return current

    @staticmethod
    def _step(current: dict[str, int], candidates: Sequence[P]) -> P:
        total = 0
        best: P | None = None
        best_weight = 0
        for peer in candidates:
            weight = current.get(peer.name, 0) + peer.weight
            current[peer.name] = weight
            total += peer.weight
            if best is None or weight > best_weight:
                best, best_weight = peer, weight
        if best is None:
            raise ValueError("no candidates to pick from")
        current[best.name] = best_weight - total
        return best

    def forget(self, names: set[str]) -> None:
        for current in self._current.values():
            for name in names:
                current.pop(name, None)
        self._schedules.clear()
        self._pending.clear()


@dataclass(slots=True)
class _Schedule:
    candidates: Sequence[Any]
    order: list[Any]
    position: int
    members: set[int]

    def is_retry(self, candidates: Sequence[Any]) -> bool:
        """A strict subset of the scheduled list, as a retry's list is."""
        return len(candidates) < len(self.candidates) and all(
            id(c) in self.members for c in candidates
        )


class LeastConnections(_Keyless):
    """Fewest requests in flight relative to weight; ties taken in turn."""

    def __init__(self) -> None:
        self._turn: dict[str, int] = {}

    def pick(self, model: str, candidates: Sequence[P], key: str | None = None) -> P:
        if not candidates:
            raise ValueError("no candidates to pick from")
        best_load = min(peer.in_flight / peer.weight for peer in candidates)
        tied = [peer for peer in candidates if peer.in_flight / peer.weight == best_load]
        return _in_turn(self._turn, model, tied)

    def forget(self, names: set[str]) -> None:
        return None


def _in_turn(turns: dict[str, int], model: str, tied: Sequence[P]) -> P:
    turn = turns.get(model, 0)
    turns[model] = turn + 1
    return tied[turn % len(tied)]


class _Rings:
    """One hash ring per model over every backend listing it, rebuilt when that set changes."""

    def __init__(self, members: Members, virtual_nodes: int) -> None:
        self._members = members
        self._virtual_nodes = virtual_nodes
        self._points = PointCache()
        self._rings: dict[str, tuple[int, HashRing]] = {}  # model -> (pool version, ring)

    def ring(self, model: str) -> HashRing:
        version = self._members.version
        known = self._rings.get(model)
        if known is not None and known[0] == version:
            return known[1]
        nodes = tuple((peer.name, peer.weight) for peer in self._members.members(model))
        if known is not None and known[1].signature == nodes:
            ring = known[1]  # a refresh that changed nothing this ring depends on
        else:
            ring = HashRing(nodes, virtual_nodes=self._virtual_nodes, cache=self._points)
        self._rings[model] = (version, ring)
        return ring

    def forget(self, names: set[str]) -> None:
        self._points.forget(names)


class ConsistentHash:
    """``ip_hash`` and ``session``: the key's owner on the model's ring.

    Ineligible owners are skipped clockwise, so while a backend is out its
    keys spread over the others in proportion to weight, and come back to it
    when it returns; nobody else's keys move.
    """

    def __init__(self, *, members: Members, key_of: KeyFunction, virtual_nodes: int) -> None:
        self._rings = _Rings(members, virtual_nodes)
        self._key_of = key_of
        self._fallback = LeastConnections()

    def key(self, request: web.Request, info: RoutingInfo) -> str | None:
        return self._key_of(request, info)

    def pick(self, model: str, candidates: Sequence[P], key: str | None = None) -> P:
        if key is None or len(candidates) == 1:
            return self._fallback.pick(model, candidates)
        allowed = {peer.name: peer for peer in candidates}
        found = self._rings.ring(model).find(key_hash(key), allowed.get)
        return found if found is not None else self._fallback.pick(model, candidates)

    def forget(self, names: set[str]) -> None:
        self._rings.forget(names)


class BoundedLoadHash(ConsistentHash):
    """``prefix_affinity``: consistent hashing with bounded load (Mirrokni et al., 2018).

    With ``T`` requests in flight over the candidates (this one included) and
    ``W`` their total weight, a backend of weight ``w`` takes the key only
    while its in-flight count is below ``ceil((1 + ε) × T × w / W)``; else the
    walk goes on clockwise. Keys stay where their cache is until that backend
    is ``ε`` above its fair share, and no backend ever goes beyond that bound.
    """

    def __init__(
        self, *, members: Members, key_of: KeyFunction, virtual_nodes: int, balance: float
    ) -> None:
        super().__init__(members=members, key_of=key_of, virtual_nodes=virtual_nodes)
        self._balance = 1.0 + balance

    def pick(self, model: str, candidates: Sequence[P], key: str | None = None) -> P:
        if key is None or len(candidates) == 1:
            return self._fallback.pick(model, candidates)
        allowed: dict[str, P] = {}
        total = 1  # this request
        weights = 0
        for peer in candidates:
            allowed[peer.name] = peer
            total += peer.in_flight
            weights += peer.weight
        scale = self._balance * total / weights

        def below_bound(name: str) -> P | None:
            peer = allowed.get(name)
            if peer is not None and peer.in_flight < math.ceil(scale * peer.weight):
                return peer
            return None

        found = self._rings.ring(model).find(key_hash(key), below_bound)
        return found if found is not None else self._fallback.pick(model, candidates)


class LeastLoad(_Keyless):
    """``least_load``: the lowest ``loadscore.load_score``; ties taken in turn.

    A scrape older than ``max_age`` seconds is ignored (the backend is scored
    on the router's in-flight count alone).
    """

    def __init__(self, *, max_age: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_age = max_age
        self._clock = clock
        self._turn: dict[str, int] = {}

    def pick(self, model: str, candidates: Sequence[P], key: str | None = None) -> P:
        horizon = self._clock() - self._max_age
        best = math.inf
        tied: list[P] = []
        for peer in candidates:
            load = peer.load
            if load is not None and load.at < horizon:
                load = None
            score = load_score(load, in_flight=peer.in_flight, weight=peer.weight)
            if score < best:
                best, tied = score, [peer]
            elif score == best:
                tied.append(peer)
        if not tied:
            raise ValueError("no candidates to pick from")
        return _in_turn(self._turn, model, tied)

    def forget(self, names: set[str]) -> None:
        return None


def make_strategy(settings: RouterSettings, members: Members) -> Strategy:
    """The strategy ``settings.strategy`` names, with its options; ValueError for others."""
    name = settings.strategy
    vnodes = settings.virtual_nodes
    if name == "round_robin":
        return SmoothWeightedRoundRobin()
    if name == "least_connections":
        return LeastConnections()
    if name == "ip_hash":
        client = ClientAddress(parse_networks(settings.trusted_proxies))
        return ConsistentHash(members=members, key_of=client, virtual_nodes=vnodes)
    if name == "session":
        return ConsistentHash(members=members, key_of=session_key, virtual_nodes=vnodes)
    if name == "prefix_affinity":
        prefix = PromptPrefix(settings.prefix_length)
        return BoundedLoadHash(
            members=members,
            key_of=prefix,
            virtual_nodes=vnodes,
            balance=settings.hash_balance_factor,
        )
    if name == "least_load":
        return LeastLoad(max_age=max_load_age(settings.load_scrape_interval))
    raise ValueError(f"unknown strategy {name!r}")
