"""What a strategy is handed: backends as peers, numbered eligible lists, a model's members.

A strategy (``balancing``) sees a backend as a :class:`Peer` (its name,
weight, requests in flight and engine load), the backends it may pick from as
an :class:`Eligible` list, numbered by the pool so that what a strategy derives
from a list can be cached under its number, and, for hash rings, every backend
of a model as :class:`Members`. The pool (``backends``) provides all three;
tests hand strategies plain objects.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from llmsvc.router.loadscore import EngineLoad


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


@dataclass(frozen=True, slots=True)
class Eligible(Generic[P]):
    """The backends that may take a model's requests now, in a stable order, numbered.

    The pool gives every different eligible list of a model a new ``version``
    (its membership or its eligibility changed) and keeps the number while the
    list stays the same, so a strategy may cache what it derives from a list
    under its version. One version, one list: its backends and their weights.
    """

    backends: Sequence[P]
    version: int

    def __iter__(self) -> Iterator[P]:
        return iter(self.backends)

    def __len__(self) -> int:
        return len(self.backends)

    def offers(self, tried: Collection[P]) -> bool:
        """Whether some backend is not in ``tried`` (a scan only when ``tried`` is as long)."""
        backends = self.backends
        return len(backends) > len(tried) or any(peer not in tried for peer in backends)


def untried(eligible: Eligible[P], tried: Collection[P]) -> Sequence[P]:
    """The eligible backends not in ``tried``: the list itself on a first try."""
    if not tried:
        return eligible.backends
    return [peer for peer in eligible.backends if peer not in tried]


class Members(Protocol):
    """Every backend of a model, eligible or not (the pool): what hash rings are built on."""

    @property
    def version(self) -> int:
        """Grows whenever the set of backends may have changed."""
        ...

    def members(self, model: str) -> Sequence[Peer]: ...
