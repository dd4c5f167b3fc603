"""``--strategy scored``: the cost (``scoring``) in process, then end to end.

The unit tests run the strategy on plain peers with an injected clock (what
the pool hands it); the end-to-end test puts a real ``llmsvc router
--strategy scored`` in front of two real ``llmsvc sim-engine`` processes and
reads the engines' own prefix-cache counters.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmsvc.router.balancing import make_strategy
from llmsvc.router.candidates import Eligible
from llmsvc.router.candidates import Peer as PeerLike
from llmsvc.router.loadscore import EngineLoad
from llmsvc.router.scoring import FULL_SCAN, PromptKey, Scored, Weights
from llmsvc.router.settings import RouterSettings
from procs import HOST, Spawn, free_port, start_router
from strategypeers import Peer, Pool

BLOCK = 16
SYSTEM = "You are a careful assistant. " * 40  # about 1,100 characters: 17 blocks


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def scored(
    peers: list[Peer],
    *,
    presume: str = "owner",
    clock: Clock | None = None,
    weights: Weights | None = None,
) -> Scored:
    return Scored(
        members=Pool(peers),
        virtual_nodes=100,
        block_tokens=BLOCK,
        index_tokens=32768,
        prefix_length=256,
        weights=weights or Weights(),
        presume="owner" if presume == "owner" else "off",
        max_age=3.0,
        clock=clock or Clock(),
        rng=random.Random(7),
    )


def listed(peers: list[Peer]) -> Eligible[Peer]:
    return Eligible(peers, version=len(peers))


def key(strategy: Scored, text: str) -> PromptKey:
    return strategy.key_of(text, prefix=text[:256])


def send(strategy: Scored, peers: list[Peer], text: str) -> Peer:
    """Pick for ``text`` and send it there (its first byte and end at once)."""
    prompt = key(strategy, text)
    peer = strategy.pick("m", listed(peers), prompt)
    flight = prompt.sent(peer)
    assert flight is not None
    flight.ended()
    return peer


def test_the_backend_holding_the_prefix_wins_at_equal_load() -> None:
    peers = [Peer("a"), Peer("b"), Peer("c")]
    strategy = scored(peers, presume="off")
    first = send(strategy, peers, SYSTEM + "question one")
    for n in range(10):
        assert send(strategy, peers, SYSTEM + f"question {n}") is first


def test_prompts_sharing_nothing_spread_in_turn() -> None:
    peers = [Peer("a"), Peer("b"), Peer("c")]
    strategy = scored(peers)
    picked = Counter(send(strategy, peers, f"{n} " * 300).name for n in range(30))
    assert picked == {"a": 10, "b": 10, "c": 10}


def test_a_loaded_holder_loses_when_its_queue_outweighs_the_saving() -> None:
    peers = [Peer("a"), Peer("b")]
    strategy = scored(peers, presume="off")
    holder = send(strategy, peers, SYSTEM + "first")
    other = peers[1] if holder is peers[0] else peers[0]
    # Requests awaiting their first byte there, with more prefill than the prefix saves.
    flights = [key(strategy, f"{n} " * 400).sent(holder) for n in range(3)]
    holder.in_flight = other.in_flight = 3  # the other has as many, decoding
    assert strategy.pick("m", listed(peers), key(strategy, SYSTEM + "second")) is other
    # Their first bytes came: the holder is cheap again (decoding weighs less than prefill).
    for flight in flights:
        assert flight is not None
        flight.first_byte()
    assert strategy.pick("m", listed(peers), key(strategy, SYSTEM + "third")) is holder


def test_first_byte_and_end_release_the_pending_work_once() -> None:
    peers = [Peer("a")]
    strategy = scored(peers)
    prompt = key(strategy, "x" * 4000)  # 1,000 tokens
    strategy.pick("m", listed(peers), prompt)
    flight = prompt.sent(peers[0])
    assert flight is not None
    assert strategy._own["a"].tokens == 1000 and strategy._own["a"].count == 1
    flight.first_byte()
    flight.first_byte()
    assert strategy._own["a"].tokens == 0 and strategy._own["a"].count == 0
    flight.ended()
    flight.ended()
    assert strategy._flights == 0 and strategy._prefilling == 0


def test_the_engines_queue_counts_only_while_the_scrape_is_fresh() -> None:
    clock = Clock()
    peers = [Peer("a"), Peer("b")]
    strategy = scored(peers, clock=clock)
    busy = EngineLoad(waiting=6, running=32, kv_use=0.9, at=clock.now, in_flight=0)
    peers[0].load = busy  # other routers' requests fill it
    picks = {strategy.pick("m", listed(peers), key(strategy, "y" * 800)).name for _ in range(4)}
    assert picks == {"b"}
    clock.now += 3.5  # older than the maximum age: ignored
    picks = {strategy.pick("m", listed(peers), key(strategy, "y" * 800)).name for _ in range(4)}
    assert picks == {"a", "b"}


def test_other_routers_requests_count_beyond_this_routers_own() -> None:
    clock = Clock()
    peers = [Peer("a", in_flight=4), Peer("b", in_flight=4)]
    strategy = scored(peers, clock=clock)
    # Both engines run 4 of this router's; a's engine runs 6 more from elsewhere.
    peers[0].load = EngineLoad(waiting=0, running=10, kv_use=0.1, at=clock.now, in_flight=4)
    peers[1].load = EngineLoad(waiting=0, running=4, kv_use=0.1, at=clock.now, in_flight=4)
    assert strategy.pick("m", listed(peers), key(strategy, "z" * 400)).name == "b"


def test_weight_divides_the_cost() -> None:
    peers = [Peer("a", weight=3, in_flight=2), Peer("b", in_flight=1)]
    strategy = scored(peers)
    assert strategy.pick("m", listed(peers), key(strategy, "w" * 400)).name == "a"


def test_presumption_sends_a_known_shared_prefix_to_its_ring_owner() -> None:
    """Two routers that sent the same system prompt to different backends both send it
    next to its ring owner: they agree without talking."""
    peers = [Peer(n) for n in "abcd"]
    one, two = scored(peers), scored(peers)
    owner = one._owner("m", listed(peers), (), SYSTEM[:256])
    assert owner is not None
    elsewhere = [peer for peer in peers if peer is not owner]
    for strategy, first in ((one, elsewhere[0]), (two, elsewhere[1])):
        flight = key(strategy, SYSTEM + "hello").sent(first)  # each router's first went by load
        assert flight is not None
        flight.ended()
    for strategy in (one, two):
        assert strategy.pick("m", listed(peers), key(strategy, SYSTEM + "next")) is owner
    # off: each router keeps to its own holder; they disagree.
    off_one, off_two = scored(peers, presume="off"), scored(peers, presume="off")
    for strategy, first in ((off_one, elsewhere[0]), (off_two, elsewhere[1])):
        flight = key(strategy, SYSTEM + "hello").sent(first)
        assert flight is not None
        flight.ended()
    assert off_one.pick("m", listed(peers), key(off_one, SYSTEM + "x")) is elsewhere[0]
    assert off_two.pick("m", listed(peers), key(off_two, SYSTEM + "x")) is elsewhere[1]


def test_a_prefix_never_seen_goes_by_load_not_to_its_owner() -> None:
    peers = [Peer(n) for n in "abcd"]
    strategy = scored(peers)
    owner = strategy._owner("m", listed(peers), (), SYSTEM[:256])
    assert owner is not None
    owner.in_flight = 1
    assert strategy.pick("m", listed(peers), key(strategy, SYSTEM + "new")) is not owner


def test_retries_skip_the_backends_tried() -> None:
    peers = [Peer("a"), Peer("b")]
    strategy = scored(peers)
    holder = send(strategy, peers, SYSTEM + "one")
    again = strategy.pick("m", listed(peers), key(strategy, SYSTEM + "two"), tried=[holder])
    assert again is not holder


def test_many_backends_evaluate_a_bounded_set_and_find_the_holder() -> None:
    peers = [Peer(f"b{n}") for n in range(1000)]
    strategy = scored(peers, presume="off")
    evaluated: list[str] = []
    cost = strategy.cost

    def counting(peer: PeerLike, uncached: float, average: float) -> float:
        evaluated.append(peer.name)
        return cost(peer, uncached, average)

    strategy.cost = counting  # type: ignore[method-assign]
    holder = peers[613]
    flight = key(strategy, SYSTEM + "one").sent(holder)
    assert flight is not None
    flight.ended()
    for n in range(20):
        evaluated.clear()
        assert strategy.pick("m", listed(peers), key(strategy, SYSTEM + f"q{n}")) is holder
        assert len(evaluated) <= 4  # holder, ring owner, two samples
    evaluated.clear()
    strategy.pick("m", listed(peers[:FULL_SCAN]), key(strategy, "fresh " * 100))
    assert len(evaluated) == FULL_SCAN  # up to FULL_SCAN candidates: every one


def test_the_index_capacity_follows_the_engines_cache_size() -> None:
    clock = Clock()
    peers = [Peer("a")]
    peers[0].load = EngineLoad(
        waiting=0, running=0, kv_use=0, at=clock.now, in_flight=0, cache_tokens=160
    )
    strategy = scored(peers, clock=clock)
    prompt = key(strategy, "q" * 64 * 30)
    strategy.pick("m", listed(peers), prompt)
    assert prompt.sent(peers[0]) is not None
    assert strategy.view(peers[0]) == {
        "blocks": 10,
        "capacity_blocks": 10,
        "block_tokens": 16,
        "pending_requests": 1,
        "pending_tokens": 480,
    }
    strategy.forget({"a"})
    assert strategy.view(peers[0])["blocks"] == 0


def test_make_strategy_builds_scored_with_its_flags() -> None:
    settings = RouterSettings(
        strategy="scored", prefix_block_tokens=32, score_decode_weight=2.0, prefix_presume="off"
    )
    strategy = make_strategy(settings, Pool())
    assert isinstance(strategy, Scored)
    assert strategy.index.block_tokens == 32
    assert strategy._weights.decode == 2.0 and not strategy._presume


@settings(max_examples=60, deadline=None, database=None)
@given(
    shape=st.lists(
        st.tuples(
            st.integers(1, 5),  # weight
            st.integers(0, 20),  # in flight
            st.none() | st.tuples(st.integers(0, 30), st.integers(0, 30), st.floats(0, 1)),
        ),
        min_size=1,
        max_size=40,  # beyond FULL_SCAN too
    ),
    prompts=st.lists(st.sampled_from(["", "sys " * 40, "sys " * 40 + "q", "x" * 700]), max_size=8),
    gone=st.integers(0, 39),
)
def test_every_pick_is_an_untried_candidate(
    shape: list[tuple[int, int, tuple[int, int, float] | None]], prompts: list[str], gone: int
) -> None:
    clock = Clock()
    peers = [
        Peer(
            f"p{n}",
            weight=weight,
            in_flight=in_flight,
            load=None
            if load is None
            else EngineLoad(
                waiting=load[0], running=load[1], kv_use=load[2], at=clock.now, in_flight=0
            ),
        )
        for n, (weight, in_flight, load) in enumerate(shape)
    ]
    strategy = scored(peers, clock=clock)
    for text in prompts:
        prompt = key(strategy, text)
        picked = strategy.pick("m", listed(peers), prompt)
        assert picked in peers
        flight = prompt.sent(picked)
        assert flight is not None
        if len(peers) > 1:
            again = strategy.pick("m", listed(peers), prompt, tried=[picked])
            assert again in peers and again is not picked
        flight.ended()
    removed = peers[gone % len(peers)]
    strategy.forget({removed.name})
    rest = [peer for peer in peers if peer is not removed]
    if rest:
        assert strategy.pick("m", Eligible(rest, version=-1), key(strategy, "sys " * 40)) in rest
    assert strategy._flights == 0 and strategy._prefilling == 0
    assert all(own.count == 0 and own.tokens == 0 for own in strategy._own.values())


# --- end to end: a real router --strategy scored in front of two simulated engines ---------


def metric_sum(text: str, name: str) -> float:
    """The sum of every sample of ``name`` (any labels, ``_total`` or not) in ``text``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ", name + "_total")):
            total += float(line.rsplit(" ", 1)[1])
    return total


def engines_and_router(spawn: Spawn, tmp_path: Path) -> tuple[dict[str, int], str]:
    """Two simulated engines (real time: a request takes a few hundred ms) behind a router
    with --strategy scored; (engine name -> port, router URL)."""
    ports: dict[str, int] = {}
    for name in ("e1", "e2"):
        port = free_port()
        proc = spawn(
            name, "sim-engine", "--port", str(port), "--model-name", "m", "--engine-id", name,
            "--decode-tokens-per-s", "50", "--prefill-tokens-per-s", "20000",
        )  # fmt: skip
        proc.wait_http(f"http://{HOST}:{port}/health")
        ports[name] = port
    services = tmp_path / "services.json"
    records = [
        {"name": name, "host": HOST, "port": port, "metadata": {"models": ["m"]}}
        for name, port in ports.items()
    ]
    services.write_bytes(orjson.dumps({"services": records}))
    _, router = start_router(
        spawn, None, "--static-services", str(services), "--strategy", "scored",
        "--load-scrape-interval", "0.2",
    )  # fmt: skip
    return ports, router


def chat(content: str) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": content}], "max_tokens": 8}


@pytest.mark.slow
def test_scored_router_hits_the_engines_prefix_cache_and_spreads_load(
    spawn: Spawn, tmp_path: Path
) -> None:
    ports, router = engines_and_router(spawn, tmp_path)

    async def concurrently(bodies: list[dict[str, Any]]) -> list[str]:
        async with aiohttp.ClientSession() as session:

            async def one(body: dict[str, Any]) -> str:
                url = f"{router}/v1/chat/completions"
                async with session.post(url, json=body) as response:
                    assert response.status == 200, await response.text()
                    return str((await response.json())["system_fingerprint"])

            return await asyncio.gather(*(one(body) for body in bodies))

    # Load: eight different prompts at once go four and four (each waits for its first
    # byte on the engine it went to, so the other is cheaper for the next).
    unique = asyncio.run(concurrently([chat(f"{n} " * 500) for n in range(8)]))
    assert Counter(unique) == {"e1": 4, "e2": 4}

    def hits() -> dict[str, float]:
        return {
            name: metric_sum(
                httpx.get(f"http://{HOST}:{port}/metrics", timeout=5).text,
                "vllm:prefix_cache_hits",
            )
            for name, port in ports.items()
        }

    before = hits()
    # A shared system prompt, one request at a time: every one after the first on the same
    # engine, a hit there.
    system = "You are the support assistant of a large shop. " * 60  # ~2,900 chars
    served = []
    for n in range(6):
        body = {
            "model": "m",
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": f"question {n}"},
            ],
            "max_tokens": 4,
        }
        answer = httpx.post(f"{router}/v1/chat/completions", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        served.append(answer.json()["system_fingerprint"])
    assert len(set(served)) == 1, served
    after = hits()
    gained = after[served[0]] - before[served[0]]
    assert gained >= 5 * 600, (before, after)  # five requests, ~700 cached tokens each

    def index() -> dict[str, dict[str, Any]]:
        services = httpx.get(f"{router}/services", timeout=5).json()["services"]
        return {view["name"]: view["prefix_index"] for view in services}

    held = index()
    assert held[served[0]]["blocks"] > 40  # the system prompt's blocks and the others'
    assert all(view["capacity_blocks"] > 0 for view in held.values())
    assert all(view["pending_requests"] == 0 for view in held.values())

    # A long stream: once its first chunk came, it no longer counts as pending prefill.
    body = {**chat("a long answer " * 100), "stream": True, "max_tokens": 200}
    with httpx.stream("POST", f"{router}/v1/chat/completions", json=body, timeout=30) as stream:
        assert stream.status_code == 200
        chunks = stream.iter_bytes()  # one iterator: a dropped one closes the stream
        next(chunks)
        services = httpx.get(f"{router}/services", timeout=5).json()["services"]
        assert sum(view["in_flight"] for view in services) == 1  # still streaming (~4 s)
        pending = [view["prefix_index"]["pending_requests"] for view in services]
        assert pending == [0, 0], services
        assert b"".join(chunks).endswith(b"data: [DONE]\n\n")
