"""The router's pure parts: strategies, passive health with a fake clock, the backend pool."""

from __future__ import annotations

from dataclasses import dataclass

from llmsvc.core.records import ServiceRecord
from llmsvc.router.backends import BackendPool, PassiveHealth
from llmsvc.router.balancing import LeastConnections, SmoothWeightedRoundRobin, make_strategy
from llmsvc.router.candidates import Eligible
from llmsvc.router.loadscore import EngineLoad
from llmsvc.router.settings import RouterSettings


@dataclass
class Peer:
    name: str
    weight: int = 1
    in_flight: int = 0
    load: EngineLoad | None = None


def eligible(*peers: Peer, version: int = 1) -> Eligible[Peer]:
    """The peers as the pool hands them to a strategy: one version of the eligible list."""
    return Eligible(peers, version=version)


def picks(
    strategy: SmoothWeightedRoundRobin | LeastConnections, peers: Eligible[Peer], n: int
) -> str:
    return "".join(strategy.pick("m", peers).name for _ in range(n))


def test_smooth_weighted_sequence_is_nginx_s() -> None:
    peers = [Peer("a", 5), Peer("b", 1), Peer("c", 1)]
    assert picks(SmoothWeightedRoundRobin(), eligible(*peers), 14) == "aabacaa" * 2


def test_equal_weights_alternate_strictly() -> None:
    assert picks(SmoothWeightedRoundRobin(), eligible(Peer("a"), Peer("b")), 8) == "abababab"
    three = eligible(Peer("a"), Peer("b"), Peer("c"))
    assert picks(SmoothWeightedRoundRobin(), three, 6) == "abcabc"


def test_weights_are_respected_over_a_cycle() -> None:
    peers = [Peer("a", 3), Peer("b", 2)]
    seq = picks(SmoothWeightedRoundRobin(), eligible(*peers), 50)
    assert (seq.count("a"), seq.count("b")) == (30, 20)
    assert "aaa" not in seq  # smooth: never a burst longer than needed


def test_balancing_is_per_model() -> None:
    rr = SmoothWeightedRoundRobin()
    peers = eligible(Peer("a"), Peer("b"))
    got = [rr.pick(model, peers).name for model in ("x", "y", "x", "y")]
    assert got == ["a", "a", "b", "b"]


def test_a_retry_subset_goes_elsewhere_and_the_cycle_goes_on() -> None:
    rr = SmoothWeightedRoundRobin()
    a, b = Peer("a"), Peer("b")
    both = eligible(a, b)
    assert rr.pick("m", both) is a
    assert rr.pick("m", both, tried=[b]) is a  # b excluded (tried already)
    # The retry left the turns alone: b's turn is next, as if the retry never happened.
    assert picks(rr, both, 4) == "baba"


def test_a_retry_takes_an_untried_backend_and_leaves_the_turns_alone() -> None:
    rr = SmoothWeightedRoundRobin()
    a, b, c = Peer("a"), Peer("b"), Peer("c")
    three = eligible(a, b, c)
    assert rr.pick("m", three) is a  # a fails: the request is tried again without it
    assert rr.pick("m", three, tried=[a]) is b
    assert picks(rr, three, 4) == "bcab"  # the next requests take their turns as before


def test_forget_drops_state_of_gone_backends() -> None:
    rr = SmoothWeightedRoundRobin()
    a, b = Peer("a", 5), Peer("b")
    rr.pick("m", eligible(a, b))
    rr.forget({"a"})
    assert rr.pick("m", eligible(Peer("a"), b, version=2)).name == "b"  # a starts from zero again


def test_least_connections_prefers_the_least_loaded() -> None:
    lc = LeastConnections()
    a, b, c = Peer("a", in_flight=3), Peer("b", in_flight=1), Peer("c", in_flight=2)
    assert lc.pick("m", eligible(a, b, c)) is b
    heavy = Peer("heavy", weight=4, in_flight=4)  # 1 per weight unit, less than a's 3
    assert lc.pick("m", eligible(a, heavy, version=2)) is heavy


def test_least_connections_breaks_ties_in_turn() -> None:
    assert picks(LeastConnections(), eligible(Peer("a"), Peer("b")), 6) == "ababab"


def test_make_strategy_knows_the_names() -> None:
    pool = BackendPool(max_fails=1, fail_timeout=30.0)
    rr = make_strategy(RouterSettings(strategy="round_robin"), pool)
    assert isinstance(rr, SmoothWeightedRoundRobin)
    lc = make_strategy(RouterSettings(strategy="least_connections"), pool)
    assert isinstance(lc, LeastConnections)


def test_passive_max_fails_within_fail_timeout_takes_out() -> None:
    p = PassiveHealth(max_fails=3, fail_timeout=10.0)
    assert not p.record_failure(0.0)
    assert not p.record_failure(5.0)
    assert p.available(5.0)
    assert p.record_failure(9.0)  # third within 10 s
    assert not p.available(9.0)
    assert not p.available(18.9)
    assert p.available(19.0)


def test_passive_failures_spread_out_do_not_take_out() -> None:
    p = PassiveHealth(max_fails=2, fail_timeout=10.0)
    assert not p.record_failure(0.0)
    assert not p.record_failure(10.5)  # the first one fell out of the window
    assert p.available(11.0)


def test_passive_probation_after_the_window() -> None:
    p = PassiveHealth(max_fails=2, fail_timeout=10.0)
    p.record_failure(0.0)
    assert p.record_failure(1.0)
    assert p.available(11.0)
    assert p.record_failure(11.5)  # first failure on probation: out again at once
    assert not p.available(12.0)
    p.record_success(22.0)  # a success after the window clears probation
    assert not p.record_failure(23.0)
    assert p.available(23.0)


def test_passive_disabled_with_zero() -> None:
    p = PassiveHealth(max_fails=0, fail_timeout=10.0)
    assert not any(p.record_failure(float(t)) for t in range(100))
    assert p.available(100.0)


def record(name: str, port: int, *models: str, **extra: object) -> ServiceRecord:
    return ServiceRecord.model_validate(
        {"name": name, "host": "127.0.0.1", "port": port, "metadata": {"models": list(models)}}
        | extra
    )


def test_pool_keeps_state_across_refreshes_and_merges_sources() -> None:
    pool = BackendPool(max_fails=1, fail_timeout=30.0)
    pool.set_static([record("s", 1, "m"), record("x", 9, "m", type="babysitter")])
    pool.set_registry([record("r", 2, "m"), record("u", 3, "m", status="unhealthy")])
    assert sorted(b.name for b in pool) == ["r", "s", "u"]  # babysitter kept out
    backend = pool.get("r")
    assert backend is not None
    backend.in_flight = 2
    backend.passive.record_failure(0.0)
    assert [b.name for b in pool.eligible("m", 1.0)] == ["s"]  # r out, u unhealthy
    pool.set_registry([record("r", 2, "m", "n")])
    same = pool.get("r")
    assert same is backend and same.in_flight == 2 and same.models == {"m", "n"}
    assert pool.removed_names() == {"u"}
    pool.set_registry([record("r", 4, "m")])  # a new address is a new backend
    fresh = pool.get("r")
    assert fresh is not backend and fresh is not None and fresh.in_flight == 0
    pool.set_registry([])  # registry view empty: static stays
    assert [b.name for b in pool] == ["s"]
    assert pool.knows("m") and not pool.knows("n")
    assert pool.healthy_models(31.0) == ["m"]
