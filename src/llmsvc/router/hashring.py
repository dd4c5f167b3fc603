"""A consistent-hash ring with virtual nodes in proportion to weight.

Every backend owns ``virtual_nodes × weight / g`` points on a 64-bit circle
(``g``: the greatest common divisor of the weights, so weights 2, 4 cost no
more than 1, 2). A key belongs to the owner of the first point clockwise from
the key's hash. Points depend only on the backend's name, so adding or
removing a backend moves only the keys it gains or loses, about ``1/n`` of
them; every other key stays where it was.

The ring is built when the set of backends changes (points are cached per
name, so a rebuild only sorts) and read with one ``bisect`` per request.
Backends that cannot take a request (unhealthy, tried already) are skipped by
walking on clockwise, never by rebuilding.

Hash: BLAKE2b (standard library, stable across processes and versions, unlike
``hash()``); an 8-byte digest of the key, 64-byte digests cut into eight
points for the ring.
"""

from __future__ import annotations

import math
import struct
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from hashlib import blake2b
from typing import TypeVar

T = TypeVar("T")

_EIGHT_POINTS = struct.Struct(">8Q")
_POINTS_PER_DIGEST = 8


def key_hash(key: str) -> int:
    """The 64-bit position of ``key`` on the ring."""
    return int.from_bytes(blake2b(key.encode(), digest_size=8).digest(), "big")


class PointCache:
    """The ring points of each backend name, computed once and reused by every ring."""

    def __init__(self) -> None:
        self._points: dict[str, list[int]] = {}

    def points(self, name: str, count: int) -> list[int]:
        """The first ``count`` points of ``name`` (the same ones every time)."""
        known = self._points.setdefault(name, [])
        block = len(known) // _POINTS_PER_DIGEST
        while len(known) < count:
            digest = blake2b(f"{name}#{block}".encode(), digest_size=64).digest()
            known.extend(_EIGHT_POINTS.unpack(digest))
            block += 1
        return known[:count]

    def forget(self, names: Iterable[str]) -> None:
        for name in names:
            self._points.pop(name, None)


class HashRing:
    """Points sorted on the circle and the name owning each one."""

    __slots__ = ("_owners", "_points", "signature")

    def __init__(
        self,
        nodes: Sequence[tuple[str, int]],
        *,
        virtual_nodes: int,
        cache: PointCache | None = None,
    ) -> None:
        """``nodes``: (name, weight) pairs; ``virtual_nodes``: points per unit of weight."""
        cache = cache or PointCache()
        unit = math.gcd(*(weight for _, weight in nodes)) if nodes else 1
        pairs: list[tuple[int, str]] = []
        for name, weight in nodes:
            count = max(1, virtual_nodes * weight // unit)
            pairs.extend((point, name) for point in cache.points(name, count))
        pairs.sort()
        self._points = [point for point, _ in pairs]
        self._owners = [name for _, name in pairs]
        self.signature = tuple(nodes)

    def __len__(self) -> int:
        return len(self._points)

    def find(self, key: int, take: Callable[[str], T | None]) -> T | None:
        """Walk clockwise from ``key``; the first non-None ``take(owner)``, or None.

        ``take`` sees each point's owner in turn (an owner may come again: it
        owns several points); it returns what to use, or None to walk on.
        """
        owners = self._owners
        size = len(owners)
        if not size:
            return None
        start = bisect_right(self._points, key)
        for step in range(size):
            found = take(owners[(start + step) % size])
            if found is not None:
                return found
        return None

    def share(self) -> dict[str, float]:
        """The fraction of the circle each name owns (for tests and docs)."""
        owned: dict[str, int] = {}
        points = self._points
        span = 1 << 64
        for i, name in enumerate(self._owners):
            previous = points[i - 1] if i else points[-1] - span
            owned[name] = owned.get(name, 0) + points[i] - previous
        return {name: arc / span for name, arc in owned.items()}
