"""``scored``: each backend's cost approximates the TTFT the request would see there.

Prefix affinity wins when prompts share a prefix and loses when they do not;
load balancing is the reverse. A cost in one unit, the prefill work ahead of
this request's first token, weighs both at once: a cached prefix is worth
exactly the prefill it saves, a queue exactly the prefill it holds. For a
backend ``b`` of weight ``w_b``::

    uncached_b = max(1, prompt_tokens - match_b × block_tokens)
    cost_b = ( uncached_b                              this request's own prefill
             + pending_b                               this router's requests to b
                                                         before their first byte
             + W_decode × decoding_b                   this router's requests to b
                                                         streaming (each slows a step)
             + W_others × others_b × (s × avg_uncached + (1 - s) × W_decode)
                                                       the other routers' requests
             + W_queue × waiting_b × avg_uncached      the engine's queue: it is full
             + W_kv × kv_use_b × avg_uncached          a full KV cache: preemption
             ) / w_b

- ``match_b``: the prompt's leading blocks in the router's index of ``b``
  (``prefixindex``); ``pending_b`` the sum of ``uncached`` of this router's
  requests sent to ``b`` that have had no first byte yet (exact: the proxy
  reports each request's send, first byte and end, see :class:`Flight`);
  ``decoding_b`` this router's other requests in flight to ``b``.
- From the engine's last scrape, when fresh (``loadscore``): ``others_b`` =
  its running + waiting requests beyond this router's in flight at scrape
  time (the other router replicas' requests), ``waiting_b`` its queue,
  ``kv_use_b`` its KV-cache use; a stale or absent scrape leaves only the
  router's own terms. ``s`` is the share of this router's requests in flight
  that await their first byte: by symmetry, the other routers' share.
- ``avg_uncached``: a moving average of ``uncached`` of the model's requests.

The lowest cost wins; ties go in turn.

**Several routers** (``--prefix-presume owner``, the default): each router's
index knows only what it sent. When a prompt's first block is held on some
backend (a prefix known to be shared), the owner of the prompt's prefix key
(``--prefix-length`` characters, stable ``key_hash``) on the model's
consistent-hash ring is presumed to hold those blocks too; every router
presumes the same owner, so shared prefixes converge on one backend per prefix
without the routers talking. A prompt whose first block is held nowhere goes
by load. ``off``: the local index only.

**Cost bound.** With more than :data:`FULL_SCAN` candidates, only the
backends holding the prompt's first block (the :data:`HOLDERS` most recent),
the ring owner and :data:`SAMPLES` others drawn at random (the power of d
choices) are evaluated, so a request's work does not grow with the number of
backends.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from llmsvc.core.wire import prompt_prefix
from llmsvc.router.balancing import _in_turn, _Rings
from llmsvc.router.candidates import Eligible, Members, P, Peer, untried
from llmsvc.router.hashring import key_hash
from llmsvc.router.prefixindex import MAX_PROMPT_CHARS, PrefixIndex, prompt_blocks, token_estimate

if TYPE_CHECKING:
    from aiohttp import web

    from llmsvc.core.wire import RoutingInfo

FULL_SCAN = 16  # candidates evaluated in full; beyond, the bounded set below
HOLDERS = 8  # most recent holders of the prompt's first block evaluated
SAMPLES = 2  # candidates drawn at random beside them (power of two choices)
AVERAGE_ALPHA = 0.05  # weight of a new request in the moving average of uncached tokens

Presume = Literal["owner", "off"]


@dataclass(frozen=True, slots=True)
class Weights:
    """The cost's weights (``--score-*-weight``)."""

    decode: float = 8.0
    queue: float = 1.0
    kv: float = 1.0
    others: float = 1.0


class _Own:
    """This router's requests to one backend: before their first byte (tokens, count)."""

    __slots__ = ("count", "tokens")

    def __init__(self) -> None:
        self.tokens = 0.0
        self.count = 0


class Flight:
    """One request on one backend, told its first byte and its end (each idempotent)."""

    __slots__ = ("_own", "_scored", "_started", "_tokens")

    def __init__(self, scored: Scored, own: _Own, tokens: float) -> None:
        self._scored = scored
        self._own = own
        self._tokens = tokens
        self._started = False
        own.tokens += tokens
        own.count += 1
        scored._prefilling += 1
        scored._flights += 1

    def first_byte(self) -> None:
        """The engine has prefilled it: its tokens no longer wait there."""
        if self._started:
            return
        self._started = True
        own = self._own
        own.tokens = max(0.0, own.tokens - self._tokens)
        own.count -= 1
        self._scored._prefilling -= 1

    def ended(self) -> None:
        """It is over (answered, failed or cancelled): nothing of it is left there."""
        if self._tokens < 0:
            return
        self.first_byte()
        self._tokens = -1.0
        self._scored._flights -= 1


class PromptKey:
    """``scored``'s key of one request: its blocks, its token estimate, its prefix key."""

    __slots__ = ("_scored", "blocks", "chosen", "prefix", "tokens")

    def __init__(self, scored: Scored | None, blocks: list[int], tokens: int, prefix: str) -> None:
        self._scored = scored
        self.blocks = blocks
        self.tokens = tokens
        self.prefix = prefix
        self.chosen: tuple[str, float] | None = None  # the last pick and its uncached tokens

    def sent(self, backend: Peer) -> Flight | None:
        """The request goes to ``backend`` now (the proxy's call, once per attempt)."""
        scored = self._scored
        return scored.sent(self, backend) if scored is not None else None


class Scored:
    """``--strategy scored``: the lowest cost of the module docstring; ties in turn."""

    def __init__(
        self,
        *,
        members: Members,
        virtual_nodes: int,
        block_tokens: int,
        index_tokens: int,
        prefix_length: int,
        weights: Weights,
        presume: Presume,
        max_age: float,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.index = PrefixIndex(block_tokens=block_tokens, default_tokens=index_tokens)
        self._rings = _Rings(members, virtual_nodes)
        self._block_tokens = block_tokens
        self._prefix_length = prefix_length
        self._weights = weights
        self._presume = presume == "owner"
        self._max_age = max_age
        self._clock = clock
        self._rng = rng or random.Random()
        self._own: dict[str, _Own] = {}
        self._average: dict[str, float] = {}  # model -> moving average of uncached tokens
        self._turn: dict[str, int] = {}
        self._by_name: dict[str, tuple[int, dict[str, Any]]] = {}  # model -> (version, names)
        self._prefilling = 0  # this router's requests before their first byte, all backends
        self._flights = 0  # and all of them in flight

    def key(self, request: web.Request, info: RoutingInfo) -> PromptKey:
        text = prompt_prefix(info.payload, MAX_PROMPT_CHARS)
        return self.key_of(text, prefix=text[: self._prefix_length], model=info.model)

    def key_of(self, text: str, *, prefix: str, model: str = "") -> PromptKey:
        """The key of a prompt of ``text`` for ``model`` (``prefix``: its ring key)."""
        blocks = prompt_blocks(text, self._block_tokens, seed=hash(model))
        return PromptKey(self, blocks, token_estimate(text), prefix)

    def pick(
        self,
        model: str,
        eligible: Eligible[P],
        key: str | PromptKey | None = None,
        *,
        tried: Collection[P] = (),
    ) -> P:
        candidates = untried(eligible, tried)
        if not candidates:
            raise ValueError("no candidates to pick from")
        if not isinstance(key, PromptKey):
            key = PromptKey(None, [], 1, "")
        blocks = key.blocks
        holders: list[str] = []
        if blocks:
            for name in self.index.holders(blocks[0]):
                holders.append(name)
                if len(holders) == HOLDERS:
                    break
        if len(candidates) > FULL_SCAN:
            evaluated: Sequence[P] = self._bounded(model, eligible, candidates, tried, holders, key)
        else:
            evaluated = candidates
        shared = 0
        owner: str | None = None
        if self._presume and holders and key.prefix:
            shared = max(self.index.match(name, blocks) for name in holders)
            found = self._owner(model, eligible, tried, key.prefix)
            owner = found.name if found is not None else None
        average = self._average.get(model, float(key.tokens))
        best = math.inf
        tied: list[tuple[P, float]] = []
        for peer in evaluated:
            match = self.index.match(peer.name, blocks) if holders else 0
            if peer.name == owner and shared > match:
                match = shared
            uncached = float(max(1, key.tokens - match * self._block_tokens))
            cost = self.cost(peer, uncached, average)
            if cost < best:
                best, tied = cost, [(peer, uncached)]
            elif cost == best:
                tied.append((peer, uncached))
        if owner is not None and len(tied) > 1:  # a tie with the owner: the owner, so that
            tied = [t for t in tied if t[0].name == owner] or tied  # every router agrees
        chosen, uncached = _in_turn(self._turn, model, tied)
        key.chosen = (chosen.name, uncached)
        self._average[model] = average + AVERAGE_ALPHA * (uncached - average)
        return chosen

    def cost(self, peer: Peer, uncached: float, average: float) -> float:
        """The cost of the module docstring for ``peer`` and a request of ``uncached``
        tokens to prefill there (``average``: the model's moving average of those)."""
        weights = self._weights
        own = self._own.get(peer.name)
        pending_tokens = own.tokens if own is not None else 0.0
        pending = own.count if own is not None else 0
        work = uncached + pending_tokens + weights.decode * max(0, peer.in_flight - pending)
        load = peer.load
        if load is not None and load.at >= self._clock() - self._max_age:
            others = max(0.0, load.running + load.waiting - load.in_flight)
            if others and weights.others:
                share = self._prefilling / self._flights if self._flights else 0.0
                prefill = share * average + (1.0 - share) * weights.decode
                work += weights.others * others * prefill
            work += (weights.queue * load.waiting + weights.kv * load.kv_use) * average
        return work / peer.weight

    def _names(self, model: str, eligible: Eligible[P]) -> dict[str, P]:
        """The eligible backends by name (cached per version of the list)."""
        known = self._by_name.get(model)
        if known is not None and known[0] == eligible.version:
            return known[1]
        names = {peer.name: peer for peer in eligible.backends}
        self._by_name[model] = (eligible.version, names)
        return names

    def _owner(
        self, model: str, eligible: Eligible[P], tried: Collection[P], prefix: str
    ) -> P | None:
        """The first eligible untried backend clockwise from ``prefix`` on the model's ring."""
        names = self._names(model, eligible)

        def take(name: str) -> P | None:
            peer = names.get(name)
            return peer if peer is not None and peer not in tried else None

        return self._rings.ring(model).find(key_hash(prefix), take)

    def _bounded(
        self,
        model: str,
        eligible: Eligible[P],
        candidates: Sequence[P],
        tried: Collection[P],
        holders: list[str],
        key: PromptKey,
    ) -> list[P]:
        """Holders of the first block, the ring owner and a few sampled candidates."""
        names = self._names(model, eligible)
        chosen: dict[str, P] = {}
        for name in holders:
            peer = names.get(name)
            if peer is not None and peer not in tried:
                chosen[name] = peer
        if key.prefix:
            owner = self._owner(model, eligible, tried, key.prefix)
            if owner is not None:
                chosen[owner.name] = owner
        for _ in range(SAMPLES):
            peer = candidates[self._rng.randrange(len(candidates))]
            chosen[peer.name] = peer
        return list(chosen.values())

    def sent(self, key: PromptKey, backend: Peer) -> Flight:
        """``key``'s request goes to ``backend``: its blocks are there now, its uncached
        tokens pending there until :meth:`Flight.first_byte`."""
        name = backend.name
        chosen = key.chosen
        tokens = chosen[1] if chosen is not None and chosen[0] == name else float(key.tokens)
        load = backend.load
        capacity = self.index.capacity_blocks(load.cache_tokens if load is not None else None)
        self.index.insert(name, key.blocks, capacity=capacity)
        own = self._own.get(name)
        if own is None:
            own = self._own[name] = _Own()
        return Flight(self, own, tokens)

    def view(self, backend: Peer) -> dict[str, Any]:
        """``GET /services``' ``prefix_index`` of ``backend``."""
        load = backend.load
        view = self.index.view(backend.name, load.cache_tokens if load is not None else None)
        own = self._own.get(backend.name)
        view["pending_requests"] = own.count if own is not None else 0  # before a first byte
        view["pending_tokens"] = round(own.tokens) if own is not None else 0
        return view

    def forget(self, names: set[str]) -> None:
        self.index.forget(names)
        self._rings.forget(names)
        for name in names:
            self._own.pop(name, None)
        self._by_name.clear()
