"""Property tests (hypothesis) of the balancing strategies' invariants.

Whatever the backends (names, weights 1..20, requests in flight, engine load)
and whatever the sequence of picks:

- every strategy picks one of the candidates it was given;
- smooth weighted round robin gives each backend exactly its weight's share of
  every full cycle, stays within two picks of its ideal share at every point of
  the cycle (smoothness: no bursts), and the turns of one model leave another's alone;
- least connections and least load pick a backend with the lowest
  (in-flight / weight, load score) — nothing is ever less loaded;
- consistent hashing is deterministic, and taking out a backend moves only the
  keys it owned;
- bounded-load hashing never gives a backend a request beyond its
  ``ceil((1 + ε) × T × w / W)`` bound;
- ``forget`` of gone backends never breaks a later pick.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmsvc.router.balancing import (
    BoundedLoadHash,
    ConsistentHash,
    LeastConnections,
    LeastLoad,
    SmoothWeightedRoundRobin,
    Strategy,
)
from llmsvc.router.candidates import Eligible
from llmsvc.router.loadscore import EngineLoad, load_score

SETTINGS = settings(
    max_examples=int(os.environ.get("PROPERTY_EXAMPLES", "60")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@dataclass
class Peer:
    name: str
    weight: int = 1
    in_flight: int = 0
    load: EngineLoad | None = None


@dataclass
class Members:
    """The pool as the hash rings see it: every backend of a model."""

    peers: Sequence[Peer]
    version: int = 1

    def members(self, model: str) -> Sequence[Peer]:
        return self.peers


def _no_key(request: object, info: object) -> str | None:
    return None


def eligible(peers: Sequence[Peer], version: int = 1) -> Eligible[Peer]:
    """The peers as the pool hands them to a strategy: one version of the eligible list."""
    return Eligible(peers, version=version)


loads = st.builds(
    EngineLoad,
    waiting=st.integers(0, 50).map(float),
    running=st.integers(0, 50).map(float),
    kv_use=st.floats(0, 1),
    at=st.just(0.0),
    in_flight=st.integers(0, 20),
)


@st.composite
def peer_lists(draw: st.DrawFn, *, min_size: int = 1, max_size: int = 8) -> list[Peer]:
    names = draw(
        st.lists(
            st.text("abcdefghijklmnop0123456789-", min_size=1, max_size=8),
            min_size=min_size,
            max_size=max_size,
            unique=True,
        )
    )
    return [
        Peer(
            name,
            weight=draw(st.integers(1, 20)),
            in_flight=draw(st.integers(0, 30)),
            load=draw(st.none() | loads),
        )
        for name in names
    ]


keys = st.text(min_size=1, max_size=40)


@SETTINGS
@given(peers=peer_lists(), rounds=st.integers(1, 50), key=st.none() | keys)
def test_every_strategy_picks_a_candidate(peers: list[Peer], rounds: int, key: str | None) -> None:
    members = Members(peers)
    strategies: list[Strategy] = [
        SmoothWeightedRoundRobin(),
        LeastConnections(),
        LeastLoad(max_age=1e9, clock=lambda: 1.0),
        ConsistentHash(members=members, key_of=_no_key, virtual_nodes=16),
        BoundedLoadHash(members=members, key_of=_no_key, virtual_nodes=16, balance=0.25),
    ]
    for strategy in strategies:
        for i in range(rounds):
            candidates = peers[: 1 + i % len(peers)] if i % 3 else peers
            listed = eligible(candidates, version=len(candidates))  # one list per version
            assert strategy.pick("m", listed, key) in candidates


@SETTINGS
@given(peers=peer_lists(max_size=6), cycles=st.integers(1, 3))
def test_round_robin_gives_each_its_weight_share_of_every_cycle(
    peers: list[Peer], cycles: int
) -> None:
    rr = SmoothWeightedRoundRobin()
    total = sum(p.weight for p in peers)
    listed = eligible(peers)
    for _ in range(cycles):
        counts = Counter(rr.pick("m", listed).name for _ in range(total))
        assert counts == {p.name: p.weight for p in peers}


@SETTINGS
@given(peers=peer_lists(max_size=6), picks=st.integers(1, 200))
def test_round_robin_is_smooth(peers: list[Peer], picks: int) -> None:
    """After any number of picks, each backend's count is within one cycle step of its share."""
    rr = SmoothWeightedRoundRobin()
    total = sum(p.weight for p in peers)
    counts: Counter[str] = Counter()
    listed = eligible(peers)
    for n in range(1, picks + 1):
        counts[rr.pick("m", listed).name] += 1
        for p in peers:
            ideal = n * p.weight / total
            # Smooth: within two picks of its ideal share (plain weighted round robin
            # strays by up to a whole weight, e.g. 15 picks of one backend in a row).
            assert abs(counts[p.name] - ideal) < 2, (n, p, counts)


@SETTINGS
@given(peers=peer_lists(max_size=5), other=st.lists(st.booleans(), max_size=40))
def test_round_robin_turns_are_per_model(peers: list[Peer], other: list[bool]) -> None:
    alone, mixed = SmoothWeightedRoundRobin(), SmoothWeightedRoundRobin()
    listed = eligible(peers)
    expected = [alone.pick("a", listed).name for _ in other]
    got = []
    for interleave in other:
        if interleave:
            mixed.pick("b", listed)
        got.append(mixed.pick("a", listed).name)
    assert got == expected


@SETTINGS
@given(peers=peer_lists())
def test_least_connections_picks_a_least_loaded(peers: list[Peer]) -> None:
    picked = LeastConnections().pick("m", eligible(peers))
    assert picked.in_flight / picked.weight == min(p.in_flight / p.weight for p in peers)


@SETTINGS
@given(peers=peer_lists(), rounds=st.integers(1, 20))
def test_least_load_picks_the_lowest_score(peers: list[Peer], rounds: int) -> None:
    strategy = LeastLoad(max_age=1e9, clock=lambda: 1.0)

    def score(p: Peer) -> float:
        return load_score(p.load, in_flight=p.in_flight, weight=p.weight)

    best = min(score(p) for p in peers)
    for _ in range(rounds):
        assert score(strategy.pick("m", eligible(peers))) == best


@SETTINGS
@given(peers=peer_lists(min_size=2), key_list=st.lists(keys, min_size=1, max_size=30))
def test_consistent_hash_moves_only_the_keys_of_a_backend_taken_out(
    peers: list[Peer], key_list: list[str]
) -> None:
    strategy = ConsistentHash(members=Members(peers), key_of=_no_key, virtual_nodes=32)
    before = {k: strategy.pick("m", eligible(peers), k).name for k in key_list}
    again = {k: strategy.pick("m", eligible(peers), k).name for k in key_list}
    assert again == before  # deterministic
    out = peers[0]
    rest = peers[1:]
    after = {k: strategy.pick("m", eligible(rest, 2), k).name for k in key_list}
    for k in key_list:
        if before[k] != out.name:
            assert after[k] == before[k], k
        else:
            assert after[k] != out.name
    back = {k: strategy.pick("m", eligible(peers, 3), k).name for k in key_list}
    assert back == before  # its keys come back to it


@SETTINGS
@given(
    peers=peer_lists(min_size=2),
    key_list=st.lists(keys, min_size=1, max_size=30),
    balance=st.floats(0.0, 2.0),
)
def test_bounded_load_never_exceeds_the_bound(
    peers: list[Peer], key_list: list[str], balance: float
) -> None:
    strategy = BoundedLoadHash(
        members=Members(peers), key_of=_no_key, virtual_nodes=32, balance=balance
    )
    for k in key_list:
        total = 1 + sum(p.in_flight for p in peers)
        weights = sum(p.weight for p in peers)
        picked = strategy.pick("m", eligible(peers), k)
        bound = math.ceil((1 + balance) * total * picked.weight / weights)
        fits = [
            p for p in peers if p.in_flight < math.ceil((1 + balance) * total * p.weight / weights)
        ]
        if fits:  # the hash walk found one within its bound
            assert picked.in_flight < bound, (picked, bound)
        picked.in_flight += 1  # the request is now in flight there


@SETTINGS
@given(peers=peer_lists(min_size=2), gone=st.data())
def test_forget_never_breaks_a_later_pick(peers: list[Peer], gone: st.DataObject) -> None:
    members = Members(peers)
    strategies: list[Strategy] = [
        SmoothWeightedRoundRobin(),
        LeastConnections(),
        ConsistentHash(members=members, key_of=_no_key, virtual_nodes=8),
        BoundedLoadHash(members=members, key_of=_no_key, virtual_nodes=8, balance=0.5),
    ]
    removed = gone.draw(st.sets(st.sampled_from([p.name for p in peers]), max_size=len(peers) - 1))
    rest = [p for p in peers if p.name not in removed]
    for strategy in strategies:
        for _ in range(5):
            strategy.pick("m", eligible(peers), "k")
        strategy.forget(set(removed))
        members.peers = rest
        members.version += 1
        for i in range(5):
            assert strategy.pick("m", eligible(rest, 2), f"k{i}") in rest
        members.peers = peers
