"""Load-balancing strategies; pure functions of the candidates and their own state.

Each strategy picks one backend for a model among the eligible candidates,
which the caller passes in a stable order. State is kept per model, so the
balancing of one model does not disturb another's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar


class Peer(Protocol):
    """What a strategy needs to know of a backend."""

    @property
    def name(self) -> str: ...

    @property
    def weight(self) -> int: ...

    @property
    def in_flight(self) -> int: ...


P = TypeVar("P", bound=Peer)


class Strategy(Protocol):
    def pick(self, model: str, candidates: Sequence[P]) -> P:
        """One of ``candidates`` (never empty) for a request for ``model``."""
        ...

    def forget(self, names: set[str]) -> None:
        """Drop the state kept for backends that are gone."""
        ...


class SmoothWeightedRoundRobin:
    """nginx's smooth weighted round robin, per model.

    Every pick adds each candidate's weight to its current weight, takes the
    candidate with the largest current weight (the first on a tie) and
    subtracts the total weight from the chosen one. Weights 5, 1, 1 give
    ``a a b a c a a``; equal weights alternate strictly.
    """

    def __init__(self) -> None:
        self._current: dict[str, dict[str, int]] = {}

    def pick(self, model: str, candidates: Sequence[P]) -> P:
        current = self._current.get(model)
        if current is None:
            current = self._current[model] = {}
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


class LeastConnections:
    """Fewest requests in flight relative to weight; ties taken in turn."""

    def __init__(self) -> None:
        self._turn: dict[str, int] = {}

    def pick(self, model: str, candidates: Sequence[P]) -> P:
        if not candidates:
            raise ValueError("no candidates to pick from")
        best_load = min(peer.in_flight / peer.weight for peer in candidates)
        tied = [peer for peer in candidates if peer.in_flight / peer.weight == best_load]
        turn = self._turn.get(model, 0)
        self._turn[model] = turn + 1
        return tied[turn % len(tied)]

    def forget(self, names: set[str]) -> None:
        return None


def make_strategy(name: str) -> Strategy:
    """The strategy called ``name``; ValueError for one this version lacks."""
    if name == "round_robin":
        return SmoothWeightedRoundRobin()
    if name == "least_connections":
        return LeastConnections()
    raise ValueError(f"strategy {name!r} is not implemented yet")
