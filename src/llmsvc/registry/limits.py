"""The registry's size and rate caps: metadata bytes, records, registrations per client.

Each cap answers in the OpenAI error shape: an oversized ``metadata`` is a 413,
a registry holding ``--max-records`` records refuses new names with a 429 (existing
names still re-register, update and heartbeat), and a client registering faster
than ``--max-registrations-per-second`` gets a 429 with ``Retry-After``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import orjson

from llmsvc.core.errors import ApiError, PayloadTooLarge
from llmsvc.registry.store import ServiceStore

# Buckets of clients idle this long are full again and are forgotten.
_IDLE_S = 60.0
# At most this many clients are tracked; past it the idle ones are dropped first.
_MAX_CLIENTS = 10_000


def check_metadata_size(metadata: dict[str, Any], limit: int) -> None:
    """A 413 when ``metadata`` serializes to more than ``limit`` bytes."""
    size = len(orjson.dumps(metadata))
    if size > limit:
        raise PayloadTooLarge(
            f"metadata too large: {size} bytes, the limit is {limit} "
            "(--max-metadata-bytes); keep metadata to model ids and small labels",
            param="metadata",
            code="metadata_too_large",
        )


def check_room_for(store: ServiceStore, name: str, limit: int) -> None:
    """A 429 when ``name`` is new and the store already holds ``limit`` records."""
    if store.get(name) is None and len(store) >= limit:
        raise ApiError(
            f"The registry holds {len(store)} records, its limit (--max-records {limit}); "
            "deregister a service or raise the limit",
            status=429,
            param="name",
            code="too_many_records",
        )


class RegistrationLimiter:
    """A token bucket per client address: ``rate`` registrations a second, ``burst`` at once.

    ``rate`` 0 turns the limit off.
    """

    def __init__(
        self, *, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client: (tokens, at)

    def admit(self, client: str) -> None:
        """Take one token for ``client``; a 429 with ``Retry-After`` when none is left."""
        if self.rate <= 0:
            return
        now = self._clock()
        tokens, at = self._buckets.get(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self._buckets[client] = (tokens, now)
            wait = math.ceil((1.0 - tokens) / self.rate)
            raise ApiError(
                f"Too many registrations from {client}: the limit is {self.rate:g} a "
                f"second (--max-registrations-per-second); retry in {wait} s",
                status=429,
                code="rate_limited",
                headers={"Retry-After": str(wait)},
            )
        self._buckets[client] = (tokens - 1.0, now)
        if len(self._buckets) > _MAX_CLIENTS:
            self._forget_idle(now)

    def _forget_idle(self, now: float) -> None:
        idle = [c for c, (_, at) in self._buckets.items() if now - at > _IDLE_S]
        for client in idle or list(self._buckets)[: len(self._buckets) // 2]:
            del self._buckets[client]
