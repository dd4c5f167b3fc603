"""Backends as strategies see them, for the strategy tests: plain objects, no pool."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from llmsvc.router.loadscore import EngineLoad


@dataclass(eq=False)
class Peer:
    """A backend: what ``candidates.Peer`` asks for (compared by identity, as backends are)."""

    name: str
    weight: int = 1
    in_flight: int = 0
    load: EngineLoad | None = None


@dataclass
class Pool:
    """The pool as strategies see it: every backend of the model, and a version."""

    peers: list[Peer] = field(default_factory=list)
    version: int = 0

    def members(self, model: str) -> Sequence[Peer]:
        return self.peers

    def set(self, peers: list[Peer]) -> None:
        self.peers = peers
        self.version += 1
