"""Each strategy's contract, in process: affinity, bounded load, weights, health, stability.

The strategies run on plain peers (what the pool hands them); the request keys
on aiohttp's own test requests; the load parser on real exposition texts.
"""

from __future__ import annotations

import math
import random
from collections import Counter

import orjson
from aiohttp.test_utils import make_mocked_request

from llmsvc.core.wire import parse_routing
from llmsvc.router.affinity import ClientAddress, PromptPrefix, parse_networks, session_key
from llmsvc.router.balancing import BoundedLoadHash, ConsistentHash, LeastLoad
from llmsvc.router.candidates import Eligible
from llmsvc.router.hashring import HashRing
from llmsvc.router.loadscore import KV_WEIGHT, EngineLoad, load_score, parse_load
from strategypeers import Peer, Pool


def session_ring(peers: list[Peer], vnodes: int = 100) -> tuple[ConsistentHash, Pool]:
    pool = Pool(list(peers))
    return ConsistentHash(members=pool, key_of=session_key, virtual_nodes=vnodes), pool


def listed(peers: list[Peer]) -> Eligible[Peer]:
    """The peers as the pool hands them to a strategy (here a list's length tells it apart)."""
    return Eligible(peers, version=len(peers))


def owners(strategy: ConsistentHash, peers: list[Peer], keys: list[str]) -> dict[str, str]:
    eligible = listed(peers)
    return {key: strategy.pick("m", eligible, key).name for key in keys}


KEYS = [f"user-{i}" for i in range(4000)]


def test_same_key_same_backend_and_keys_spread() -> None:
    peers = [Peer(n) for n in "abcd"]
    strategy, _ = session_ring(peers)
    first = owners(strategy, peers, KEYS)
    assert owners(strategy, peers, KEYS) == first  # affinity holds
    counts = Counter(first.values())
    assert set(counts) == set("abcd")
    assert all(600 < n < 1400 for n in counts.values()), counts


def test_ring_share_follows_weight() -> None:
    weights = {"a": 1, "b": 2, "c": 3, "d": 4}
    ring = HashRing(list(weights.items()), virtual_nodes=100)
    share = ring.share()
    total = sum(weights.values())
    for name, weight in weights.items():
        assert math.isclose(share[name], weight / total, rel_tol=0.25), share
    peers = [Peer(n, w) for n, w in weights.items()]
    strategy, _ = session_ring(peers)
    counts = Counter(owners(strategy, peers, KEYS).values())
    for name, weight in weights.items():
        assert math.isclose(counts[name] / len(KEYS), weight / total, rel_tol=0.3), counts


def test_one_backend_leaving_moves_only_its_keys() -> None:
    peers = [Peer(n) for n in "abcde"]
    strategy, pool = session_ring(peers)
    before = owners(strategy, peers, KEYS)
    rest = [p for p in peers if p.name != "c"]
    pool.set(rest)  # c deregistered: the ring is rebuilt without it
    after = owners(strategy, rest, KEYS)
    moved = [k for k in KEYS if before[k] != after[k]]
    assert all(before[k] == "c" for k in moved)  # nobody else's keys move
    assert 0.1 < len(moved) / len(KEYS) < 0.3  # about 1/n of them
    pool.set(peers)  # c is back: every key returns where it was
    assert owners(strategy, peers, KEYS) == before


def test_unhealthy_backend_is_skipped_without_rebuilding() -> None:
    peers = [Peer(n) for n in "abcd"]
    strategy, pool = session_ring(peers)
    before = owners(strategy, peers, KEYS)
    eligible = [p for p in peers if p.name != "b"]  # b fails its health check
    during = owners(strategy, eligible, KEYS)
    assert "b" not in during.values()
    assert all(during[k] == before[k] for k in KEYS if before[k] != "b")
    spread = Counter(during[k] for k in KEYS if before[k] == "b")
    assert len(spread) == 3  # b's keys spread over the others
    assert pool.version == 0  # the pool did not change, nor did the ring
    assert owners(strategy, peers, KEYS) == before


def test_no_key_falls_back_to_least_connections() -> None:
    a, b = Peer("a", in_flight=3), Peer("b", in_flight=1)
    strategy, _ = session_ring([a, b])
    assert strategy.pick("m", listed([a, b]), None) is b


def within_bound(peers: list[Peer], balance: float) -> bool:
    total = sum(p.in_flight for p in peers)
    weights = sum(p.weight for p in peers)
    return all(p.in_flight <= math.ceil((1 + balance) * total * p.weight / weights) for p in peers)


def test_bounded_load_holds_under_skewed_keys() -> None:
    peers = [Peer("a"), Peer("b", weight=2), Peer("c"), Peer("d")]
    pool = Pool(peers)
    balance = 0.25
    strategy = BoundedLoadHash(members=pool, key_of=session_key, virtual_nodes=100, balance=balance)
    rng = random.Random(7)
    hot_owner = strategy.pick("m", listed(peers), "system prompt everyone shares")
    placed: Counter[str] = Counter()
    for step in range(2000):
        # 80% of requests share one prefix; the rest are Zipf-distributed.
        if rng.random() < 0.8:
            key = "system prompt everyone shares"
        else:
            key = f"prompt-{int(rng.paretovariate(1.2))}"
        chosen = strategy.pick("m", listed(peers), key)
        chosen.in_flight += 1
        placed[chosen.name] += 1
        assert within_bound(peers, balance), (step, [(p.name, p.in_flight) for p in peers])
        if step % 3 == 0:  # a request finishes now and then
            busy = [p for p in peers if p.in_flight]
            rng.choice(busy).in_flight -= 1
    assert placed[hot_owner.name] == max(placed.values())  # the hot key still mostly sticks
    assert len(placed) == 4  # overflow walked on to the others


def test_bounded_load_keeps_affinity_while_load_is_low() -> None:
    peers = [Peer(n) for n in "abcd"]
    strategy = BoundedLoadHash(
        members=Pool(peers), key_of=session_key, virtual_nodes=100, balance=0.25
    )
    for key in ("alpha", "beta", "gamma"):
        picked = {strategy.pick("m", listed(peers), key).name for _ in range(20)}  # none in flight
        assert len(picked) == 1


def test_client_address_honours_forwarded_for_only_from_trusted_proxies() -> None:
    none = ClientAddress(())
    assert none.resolve("203.0.113.9", ["1.2.3.4"]) == "203.0.113.9"  # nobody trusted
    trusted = ClientAddress(parse_networks(["10.0.0.0/8", "192.168.1.1"]))
    assert trusted.resolve("203.0.113.9", ["1.2.3.4"]) == "203.0.113.9"  # forged by a client
    assert trusted.resolve("10.1.1.1", ["1.2.3.4"]) == "1.2.3.4"
    # read from the right, through trusted hops only; the client's own entries are ignored
    assert trusted.resolve("10.1.1.1", ["6.6.6.6, 1.2.3.4", "192.168.1.1"]) == "1.2.3.4"
    assert trusted.resolve("10.1.1.1", ["10.2.2.2, 10.3.3.3"]) == "10.2.2.2"  # all trusted
    assert trusted.resolve("10.1.1.1", []) == "10.1.1.1"
    assert trusted.resolve("::ffff:10.1.1.1", ["1.2.3.4"]) == "1.2.3.4"  # IPv4-mapped peer
    assert trusted.resolve(None, ["1.2.3.4"]) is None


def chat(**extra: object) -> bytes:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]} | extra
    return orjson.dumps(body)


def test_session_from_header_then_user() -> None:
    info = parse_routing(chat(user="alice"))
    with_header = make_mocked_request("POST", "/v1/chat/completions", {"X-Session-Id": "s-1"})
    without = make_mocked_request("POST", "/v1/chat/completions")
    assert session_key(with_header, info) == "s-1"
    assert session_key(without, info) == "alice"
    assert session_key(without, parse_routing(chat())) is None
    assert session_key(without, parse_routing(chat(user=""))) is None


def test_prompt_prefix_key() -> None:
    request = make_mocked_request("POST", "/v1/completions")
    key = PromptPrefix(8)
    assert key(request, parse_routing(orjson.dumps({"model": "m", "prompt": "abcdefghij"}))) == (
        "abcdefgh"
    )
    assert key(request, parse_routing(orjson.dumps({"model": "m", "prompt": ""}))) is None


VLLM = b"""# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 2.0
vllm:num_requests_running{engine="1",model_name="m"} 1.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
vllm:num_requests_waiting{engine="0",model_name="m"} 3.0
vllm:num_requests_waiting_by_reason{reason="capacity"} 99.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.5
vllm:prompt_tokens_total{engine="0",model_name="m"} 400.0
"""

OLD_VLLM = b"""vllm:num_requests_running{model_name="m"} 1.0 1700000000000
vllm:num_requests_waiting{model_name="m"} 0.0
vllm:gpu_cache_usage_perc{model_name="m"} 0.75
"""

SGLANG = b"""# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="m",engine_type="unified"} 4.0
sglang:num_queue_reqs{model_name="m",engine_type="unified"} 1.0
sglang:token_usage{model_name="m",engine_type="unified"} 0.5
"""

LLAMACPP = b"""# HELP llamacpp:requests_processing Number of requests processing.
llamacpp:requests_processing 1
llamacpp:requests_deferred 2
llamacpp:kv_cache_usage_ratio 0.125
"""


def test_load_is_read_from_each_engine_s_names() -> None:
    cases = {
        VLLM: (3.0, 3.0, 0.5),  # counts summed over ranks, KV use the largest
        OLD_VLLM: (0.0, 1.0, 0.75),  # a sample with a timestamp
        SGLANG: (1.0, 4.0, 0.5),
        LLAMACPP: (2.0, 1.0, 0.125),
    }
    for text, (waiting, running, kv) in cases.items():
        load = parse_load(text, at=1.0, in_flight=0)
        assert load is not None
        assert (load.waiting, load.running, load.kv_use) == (waiting, running, kv), text
    assert (
        parse_load(b"# nothing here\nprocess_cpu_seconds_total 3.0\n", at=1.0, in_flight=0) is None
    )


def test_score_combines_engine_load_with_router_in_flight() -> None:
    load = EngineLoad(waiting=1.0, running=2.0, kv_use=0.5, at=0.0, in_flight=2)
    assert load_score(load, in_flight=2, weight=1) == 3 + 1 + KV_WEIGHT * 0.5
    assert load_score(load, in_flight=4, weight=1) == 5 + 1 + KV_WEIGHT * 0.5  # sent since
    assert load_score(load, in_flight=4, weight=2) == 3 + KV_WEIGHT * 0.5
    assert load_score(None, in_flight=3, weight=2) == 1.5


def test_least_load_picks_the_least_loaded_and_stays_fresh_between_scrapes() -> None:
    now = 100.0
    busy = Peer("busy", load=EngineLoad(waiting=4, running=8, kv_use=0.9, at=now, in_flight=0))
    idle = Peer("idle", load=EngineLoad(waiting=0, running=1, kv_use=0.1, at=now, in_flight=0))
    strategy = LeastLoad(max_age=3.0, clock=lambda: now)
    assert strategy.pick("m", listed([busy, idle])) is idle
    picks = []
    for _ in range(40):  # no new scrape: the router's own count keeps the choice fresh
        chosen = strategy.pick("m", listed([busy, idle]))
        chosen.in_flight += 1
        picks.append(chosen.name)
    # busy scores (12 + 4) + 4 x 0.9 = 19.6; idle 1 + 0.4 plus what it was sent since:
    # it takes 19 requests (score 20.4) before busy is the lower one.
    assert picks.index("busy") == 19
    assert picks[:19] == ["idle"] * 19


def test_least_load_ignores_a_stale_scrape() -> None:
    now = 100.0
    stale = Peer("stale", load=EngineLoad(waiting=9, running=9, kv_use=1.0, at=90.0, in_flight=0))
    fresh = Peer("fresh", load=EngineLoad(waiting=0, running=1, kv_use=0.0, at=now, in_flight=0))
    strategy = LeastLoad(max_age=3.0, clock=lambda: now)
    assert strategy.pick("m", listed([stale, fresh])) is stale  # scored on in flight (0) alone
