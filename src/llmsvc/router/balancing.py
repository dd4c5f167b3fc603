"""Load-balancing strategies: each picks one backend among the eligible candidates.

The proxy asks a strategy for the request's affinity key once (``key``, None
for strategies that need none), then for a backend (``pick``) among the ones
the pool found eligible (healthy, serving the model: an :class:`Eligible`
list, in a stable order and numbered) and not in ``tried``, the backends this
request was already sent to. State is kept per model, so the balancing of one
model does not disturb another's. Per request, no strategy does more than one
pass over the candidates (round robin none on a first try: it walks a
schedule cached under the eligible list's version); hash rings are built when the set of backends
changes and read with one ``bisect`` (``hashring``).

| strategy | picks |
| --- | --- |
| ``round_robin`` | nginx's smooth weighted round robin |
| ``least_connections`` | fewest requests in flight per unit of weight |
| ``ip_hash``, ``session`` | the key's backend on a consistent-hash ring |
| ``prefix_affinity`` | the same, with bounded load (Mirrokni et al.) |
| ``least_load`` | lowest score from the engines' own metrics (``loadscore``) |
| ``scored`` | lowest estimated TTFT: uncached prefill plus queues (``scoring``) |

Requests without a key (no session, an empty prompt) go to least connections.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, TypeVar

from llmsvc.router.affinity import (
    ClientAddress,
    KeyFunction,
    PromptPrefix,
    parse_networks,
    session_key,
)
from llmsvc.router.candidates import Eligible, Members, P, untried
from llmsvc.router.hashring import HashRing, PointCache, key_hash
from llmsvc.router.loadscore import load_score, max_load_age

if TYPE_CHECKING:
    from aiohttp import web

    from llmsvc.core.wire import RoutingInfo
    from llmsvc.router.scoring import PromptKey
    from llmsvc.router.settings import RouterSettings

Key: TypeAlias = "str | PromptKey | None"
"""A request's key: an affinity key (hashing strategies), ``scored``'s prompt key, or None."""

T = TypeVar("T")


class Strategy(Protocol):
    """What the proxy asks of a strategy; :func:`make_strategy` makes the one configured."""

    def key(self, request: web.Request, info: RoutingInfo) -> Key:
        """The request's key, or None (also for strategies that use none)."""
        ...

    def pick(
        self,
        model: str,
        eligible: Eligible[P],
        key: Key = None,
        *,
        tried: Collection[P] = (),
    ) -> P:
        """One of ``eligible`` not in ``tried`` (some backend is) for a request for ``model``.

        ``tried`` holds the backends this request was already sent to: a retry.
        """
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

    That scan is linear in the number of candidates. So the cycle of
    ``sum(weights) / gcd(weights)`` picks is computed once per version of the
    eligible list (for equal weights it is the list itself) and then walked,
    one step per request, whatever the number of backends. A new version gets
    its cycle started right after the backend picked last, so turns go on
    across the change. A retry (``tried`` not empty) takes the scan over the
    backends not tried and leaves the turns alone, as nginx's retries do.
    Weighted cycles too long to simulate take the scan.
    """

    MAX_SCHEDULE_WORK = 200_000  # steps × candidates simulated at most per change (~50 ms)

    def __init__(self) -> None:
        self._current: dict[str, dict[str, int]] = {}  # the scan's current weights, per model
        self._schedules: dict[str, _Schedule] = {}
        self._last: dict[str, str] = {}  # the name picked last (not by a retry), per model

    def pick(
        self,
        model: str,
        eligible: Eligible[P],
        key: Key = None,
        *,
        tried: Collection[P] = (),
    ) -> P:
        if tried:
            return self._step(self._state(model), untried(eligible, tried))
        schedule = self._schedules.get(model)
        if schedule is None or schedule.version != eligible.version:
            schedule = self._schedule(model, eligible)
        if schedule.order:
            peer: P = schedule.order[schedule.position]
            schedule.position = (schedule.position + 1) % len(schedule.order)
        else:
            peer = self._step(self._state(model), eligible.backends)
        self._last[model] = peer.name
        return peer

    def _schedule(self, model: str, eligible: Eligible[P]) -> _Schedule:
        """The cycle of ``eligible``, from after the backend picked last; empty: scan."""
        candidates = eligible.backends
        weights = [peer.weight for peer in candidates]
        if not weights:
            raise ValueError("no candidates to pick from")
        order: list[P] = []
        if len(set(weights)) == 1:
            order = list(candidates)  # equal weights: the cycle is the list itself
        else:
            length = sum(weights) // math.gcd(*weights)
            # Simulating the cycle costs length × candidates steps, once per version.
            if length * len(candidates) <= self.MAX_SCHEDULE_WORK:
                current: dict[str, int] = {}
                order = [self._step(current, candidates) for _ in range(length)]
        last = self._last.get(model)
        names = [peer.name for peer in order]
        position = (names.index(last) + 1) % len(order) if last in names else 0
        schedule = _Schedule(eligible.version, order, position)
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


@dataclass(slots=True)
class _Schedule:
    """Round robin's cycle for one version of a model's eligible list (empty: scan)."""

    version: int
    order: list[Any]
    position: int


class LeastConnections(_Keyless):
    """Fewest requests in flight relative to weight; ties taken in turn."""

    def __init__(self) -> None:
        self._turn: dict[str, int] = {}

    def pick(
        self,
        model: str,
        eligible: Eligible[P],
        key: Key = None,
        *,
        tried: Collection[P] = (),
    ) -> P:
        return self.among(model, untried(eligible, tried))

    def among(self, model: str, candidates: Sequence[P]) -> P:
        """The least loaded of ``candidates`` (the fallback of the hashing strategies)."""
        if not candidates:
            raise ValueError("no candidates to pick from")
        best_load = min(peer.in_flight / peer.weight for peer in candidates)
        tied = [peer for peer in candidates if peer.in_flight / peer.weight == best_load]
        return _in_turn(self._turn, model, tied)

    def forget(self, names: set[str]) -> None:
        return None


def _in_turn(turns: dict[str, int], model: str, tied: Sequence[T]) -> T:
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

    def pick(
        self,
        model: str,
        eligible: Eligible[P],
        key: Key = None,
        *,
        tried: Collection[P] = (),
    ) -> P:
        candidates = untried(eligible, tried)
        if not isinstance(key, str) or len(candidates) == 1:
            return self._fallback.among(model, candidates)
        found = self._owner(model, candidates, key)
        return found if found is not None else self._fallback.among(model, candidates)

    def _owner(self, model: str, candidates: Sequence[P], key: str) -> P | None:
        """The first of ``candidates`` clockwise from ``key`` on the ring."""
        allowed = {peer.name: peer for peer in candidates}
        return self._rings.ring(model).find(key_hash(key), allowed.get)

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

    def _owner(self, model: str, candidates: Sequence[P], key: str) -> P | None:
        """The first of ``candidates`` below its bound clockwise from ``key`` on the ring."""
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

        return self._rings.ring(model).find(key_hash(key), below_bound)


class LeastLoad(_Keyless):
    """``least_load``: the lowest ``loadscore.load_score``; ties taken in turn.

    A scrape older than ``max_age`` seconds is ignored (the backend is scored
    on the router's in-flight count alone).
    """

    def __init__(self, *, max_age: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_age = max_age
        self._clock = clock
        self._turn: dict[str, int] = {}

    def pick(
        self,
        model: str,
        eligible: Eligible[P],
        key: Key = None,
        *,
        tried: Collection[P] = (),
    ) -> P:
        horizon = self._clock() - self._max_age
        best = math.inf
        tied: list[P] = []
        for peer in untried(eligible, tried):
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
    if name == "scored":
        from llmsvc.router.scoring import Scored, Weights  # scoring builds on this module

        return Scored(
            members=members,
            virtual_nodes=vnodes,
            block_tokens=settings.prefix_block_tokens,
            index_tokens=settings.prefix_index_tokens,
            prefix_length=settings.prefix_length,
            weights=Weights(
                decode=settings.score_decode_weight,
                queue=settings.score_queue_weight,
                kv=settings.score_kv_weight,
                others=settings.score_others_weight,
            ),
            presume=settings.prefix_presume,
            max_age=max_load_age(settings.load_scrape_interval),
        )
    raise ValueError(f"unknown strategy {name!r}")
