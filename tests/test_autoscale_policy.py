"""The scaling decision code (llmsvc.autoscale), with an injected clock: need, Scaler, to_wake."""

from __future__ import annotations

import random
import time

import pytest

from llmsvc.autoscale import Decision, Observation, Policy, Scaler, need, to_wake


def obs(demand: int, waiting: int | None = None, **kw: float | int | None) -> Observation:
    return Observation(demand=demand, waiting=demand if waiting is None else waiting, **kw)  # type: ignore[arg-type]


class Run:
    """A Scaler whose decisions are applied, as the operator applies them."""

    def __init__(self, policy: Policy, current: int = 0) -> None:
        self.scaler = Scaler(policy)
        self.current = current
        self.decisions: list[tuple[float, Decision]] = []

    def at(self, now: float, observation: Observation) -> int:
        decision = self.scaler.decide(now, observation, self.current)
        self.decisions.append((now, decision))
        self.current = decision.desired
        return self.current


# -- need ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("demand", "expected"), [(0, 0), (1, 1), (8, 1), (9, 2), (16, 2), (17, 3), (1000, 10)]
)
def test_need_requests_is_demand_over_target_rounded_up_within_max(
    demand: int, expected: int
) -> None:
    policy = Policy(min_replicas=0, max_replicas=10, target_requests=8)
    assert need(policy, obs(demand, 0), current=0) == expected


def test_need_keeps_min_replicas() -> None:
    assert need(Policy(min_replicas=2, max_replicas=5), obs(0), current=0) == 2


def test_need_kv_cache_is_usage_over_target_times_ready() -> None:
    policy = Policy(min_replicas=0, max_replicas=10, target_kv_cache=0.8, metric="kvCache")
    assert need(policy, obs(5, 0, kv_cache=0.8, ready=3), current=3) == 3  # no float drift
    assert need(policy, obs(5, 0, kv_cache=0.9, ready=3), current=3) == 4
    assert need(policy, obs(5, 0, kv_cache=0.2, ready=4), current=4) == 1


def test_need_kv_cache_unknown_keeps_current() -> None:
    policy = Policy(min_replicas=0, max_replicas=10, metric="kvCache")
    assert need(policy, obs(40, 0, kv_cache=None, ready=2), current=2) == 2


@pytest.mark.parametrize("metric", ["requests", "kvCache"])
def test_need_is_at_least_one_while_requests_wait(metric: str) -> None:
    policy = Policy(min_replicas=0, max_replicas=3, target_requests=100, metric=metric)  # type: ignore[arg-type]
    assert need(policy, obs(1, 1), current=0) == 1
    assert need(policy, obs(0, 0), current=0) == 0


def test_policy_rejects_min_above_max() -> None:
    with pytest.raises(ValueError, match="min_replicas"):
        Policy(min_replicas=3, max_replicas=2)


# -- scaling up ------------------------------------------------------------------------


def test_up_at_once_from_zero_with_the_reason() -> None:
    run = Run(Policy(min_replicas=0, max_replicas=4))
    assert run.at(0.0, obs(0)) == 0
    assert run.at(1.0, obs(3)) == 1
    decision = run.decisions[-1][1]
    assert decision.changed and decision.current == 0
    assert decision.reason == "3 requests waiting"


def test_up_to_what_the_demand_needs_in_one_step() -> None:
    run = Run(Policy(min_replicas=1, max_replicas=8), current=1)
    assert run.at(0.0, obs(17, 0)) == 3
    assert run.decisions[-1][1].reason == "demand 17 over 1 replicas"


def test_scale_up_delay_waits_for_continued_need() -> None:
    run = Run(Policy(min_replicas=1, max_replicas=8, scale_up_delay=10), current=1)
    assert run.at(0.0, obs(20, 0)) == 1
    assert "scale-up delay" in run.decisions[-1][1].reason
    assert run.at(5.0, obs(20, 0)) == 1
    assert run.at(6.0, obs(4, 0)) == 1  # the need went away: the delay starts again
    assert run.at(7.0, obs(20, 0)) == 1
    assert run.at(16.0, obs(20, 0)) == 1  # 9 s of continued need
    assert run.at(17.0, obs(20, 0)) == 3  # 10 s


def test_scale_up_delay_goes_to_the_need_sustained_over_it() -> None:
    run = Run(Policy(min_replicas=0, max_replicas=8, scale_up_delay=10), current=1)
    run.at(0.0, obs(24, 0))  # needs 3
    run.at(5.0, obs(64, 0))  # a spike needing 8
    assert run.at(10.0, obs(64, 0)) == 3  # sustained over the 10 s: 3, not the spike's 8
    assert run.at(15.0, obs(64, 0)) == 8  # now 8 was needed for 10 s


def test_never_above_max() -> None:
    run = Run(Policy(min_replicas=0, max_replicas=2))
    assert run.at(0.0, obs(100)) == 2


# -- scaling down ----------------------------------------------------------------------


def test_down_only_after_the_scale_down_delay() -> None:
    run = Run(Policy(min_replicas=0, max_replicas=4, scale_down_delay=300))
    assert run.at(0.0, obs(20)) == 3
    for t in range(1, 301, 10):
        assert run.at(float(t), obs(0)) == 3
    assert run.at(300.5, obs(0)) == 3  # the need seen at t=0 held until t=1
    assert run.at(301.0, obs(0)) == 0
    assert run.decisions[-1][1].reason == "idle for 300 s"


def test_down_to_the_highest_need_over_the_window() -> None:
    run = Run(Policy(min_replicas=0, max_replicas=8, scale_down_delay=60), current=0)
    run.at(0.0, obs(64))  # 8
    run.at(30.0, obs(24))  # 3
    run.at(45.0, obs(8))  # 1
    assert run.at(89.0, obs(8)) == 8  # 8 held from t=0 until the next look at t=30
    assert run.at(90.0, obs(8)) == 3  # the 8 left the window; 3 (t=30..45) is the highest
    assert run.decisions[-1][1].reason == "needed at most 3 over the last 60 s"
    assert run.at(105.0, obs(8)) == 1
    assert run.at(200.0, obs(8)) == 1  # never to 0 with demand


def test_never_to_zero_while_there_is_demand() -> None:
    policy = Policy(min_replicas=0, max_replicas=4, target_requests=1000, scale_down_delay=0)
    run = Run(policy, current=1)
    assert run.at(0.0, obs(1, 0)) == 1  # in flight, none waiting: the replica serving it stays
    assert run.at(1.0, obs(0, 0)) == 0


def test_never_to_zero_with_demand_under_kv_cache() -> None:
    policy = Policy(min_replicas=0, max_replicas=4, metric="kvCache", scale_down_delay=0)
    run = Run(policy, current=1)
    assert run.at(0.0, obs(2, 0, kv_cache=0.0, ready=1)) == 1


def test_a_fresh_scaler_counts_what_runs_as_needed() -> None:
    """An operator restart does not give replicas back before a full scale-down delay."""
    run = Run(Policy(min_replicas=0, max_replicas=4, scale_down_delay=100), current=3)
    assert run.at(1000.0, obs(0)) == 3
    assert run.at(1099.5, obs(0)) == 3
    assert run.at(1100.0, obs(0)) == 0
    assert run.decisions[-1][1].reason == "idle for 100 s"


def test_below_min_comes_back_at_once() -> None:
    run = Run(Policy(min_replicas=2, max_replicas=4, scale_up_delay=60), current=0)
    assert run.at(0.0, obs(0)) == 2
    assert run.decisions[-1][1].reason == "below minReplicas 2"


# -- a spec change ---------------------------------------------------------------------


def test_lowered_max_applies_at_once_and_history_is_kept() -> None:
    run = Run(Policy(min_replicas=0, max_replicas=8, scale_down_delay=60))
    assert run.at(0.0, obs(64)) == 8
    run.scaler.update(Policy(min_replicas=0, max_replicas=3, scale_down_delay=60))
    assert run.at(1.0, obs(64)) == 3
    assert run.decisions[-1][1].reason == "above maxReplicas 3"
    run.scaler.update(Policy(min_replicas=0, max_replicas=8, scale_down_delay=60))
    assert run.at(2.0, obs(0)) == 3  # demand gone: the window still remembers 8, kept within 3
    assert run.at(61.5, obs(0)) == 3  # the last 8 (seen at t=1) held until t=2
    assert run.at(62.0, obs(0)) == 0


def test_raised_max_lets_the_need_through() -> None:
    run = Run(Policy(min_replicas=0, max_replicas=2))
    assert run.at(0.0, obs(40)) == 2
    run.scaler.update(Policy(min_replicas=0, max_replicas=10))
    assert run.at(1.0, obs(40)) == 5


def test_shorter_scale_down_delay_applies_to_the_history() -> None:
    run = Run(Policy(min_replicas=0, max_replicas=4, scale_down_delay=300))
    run.at(0.0, obs(20))
    run.scaler.update(Policy(min_replicas=0, max_replicas=4, scale_down_delay=10))
    assert run.at(5.0, obs(0)) == 3
    assert run.at(11.0, obs(0)) == 3  # the need of t=0 held until t=5
    assert run.at(15.0, obs(0)) == 0


def test_one_idle_look_after_a_gap_is_not_an_idle_window() -> None:
    """Sparse observations (a slow round): the need seen last holds until the next look."""
    run = Run(Policy(min_replicas=0, max_replicas=4, scale_down_delay=60))
    assert run.at(0.0, obs(20)) == 3
    assert run.at(100.0, obs(0)) == 3  # first look in 100 s: the 3 held until now
    assert run.at(159.0, obs(0)) == 3
    assert run.at(160.0, obs(0)) == 0
    assert run.decisions[-1][1].reason == "idle for 60 s"


# -- properties over a random day ------------------------------------------------------


def test_invariants_over_random_traffic() -> None:
    rng = random.Random(14)
    policy = Policy(min_replicas=0, max_replicas=6, scale_up_delay=5, scale_down_delay=30)
    run = Run(policy)
    needs: list[tuple[float, int]] = []
    t = 0.0
    for _ in range(5000):
        t += rng.uniform(0.1, 3.0)
        demand = rng.choice([0, 0, 0, 1, 3, 9, 20, 45, 60])
        before = run.current
        after = run.at(t, obs(demand))
        needs.append((t, need(policy, obs(demand), before)))
        assert 0 <= after <= 6
        if demand > 0:
            assert after >= 1
        if after < before:  # down: no need above `after` within the delay
            assert all(n <= after for when, n in needs if when >= t - 30)


def test_decide_is_cheap() -> None:
    """The simulator runs ~170k decisions for a day; each must stay well under 1 ms."""
    scaler = Scaler(Policy(min_replicas=0, max_replicas=20, scale_down_delay=3600))
    current, start = 0, time.perf_counter()
    for i in range(50_000):
        current = scaler.decide(i * 0.5, obs((i * 7919) % 97), current).desired
    assert (time.perf_counter() - start) / 50_000 < 1e-3  # generous: ~5 us here


# -- to_wake ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("held", "ready", "waking", "standby", "expected"),
    [
        (3, 0, 0, 2, 1),  # held, nothing ready or waking: wake one (not two)
        (0, 0, 0, 2, 0),  # nothing held
        (3, 1, 0, 2, 0),  # one is ready: it serves them
        (3, 0, 1, 2, 0),  # one is waking already
        (3, 0, 0, 0, 0),  # none in standby
    ],
)
def test_to_wake(held: int, ready: int, waking: int, standby: int, expected: int) -> None:
    assert to_wake(held=held, ready=ready, waking=waking, standby=standby) == expected
    # target 0 is the same rule whatever the demand: only the first engine
    assert to_wake(held=held, ready=ready, waking=waking, standby=standby, demand=100) == expected


@pytest.mark.parametrize(
    ("held", "ready", "waking", "standby", "demand", "expected"),
    [
        (1, 0, 0, 4, 1, 1),  # a single held request wakes exactly one
        (3, 0, 1, 4, 3, 0),  # the first is waking and is enough for 3
        (20, 0, 0, 4, 20, 3),  # 20 held at 8 per engine: 3 at once
        (20, 0, 0, 2, 20, 2),  # never more than are in standby
        (0, 1, 0, 4, 8, 0),  # 8 on the one ready engine: enough
        (0, 1, 0, 4, 9, 1),  # 9: a second one
        (0, 1, 0, 1, 20, 1),  # 20 wants 3; 1 ready + the 1 in standby
        (0, 1, 1, 4, 16, 0),  # the second is waking: asking again wakes nothing more
        (0, 1, 1, 4, 17, 1),  # 17: a third
        (0, 3, 0, 4, 9, 0),  # more ready than the demand needs: never fewer (no stop here)
        (0, 0, 0, 4, 0, 0),  # nothing asked, nothing woken
        (5, 0, 0, 4, 0, 1),  # a caller's demand below its held: held counts
        (0, 2, 0, 0, 100, 0),  # none in standby
    ],
)
def test_to_wake_grows_with_demand(
    held: int, ready: int, waking: int, standby: int, demand: int, expected: int
) -> None:
    got = to_wake(held=held, ready=ready, waking=waking, standby=standby, demand=demand, target=8)
    assert got == expected


def test_to_wake_with_a_fractional_target() -> None:
    assert to_wake(held=0, ready=1, waking=0, standby=3, demand=3, target=1.5) == 1


def test_a_second_step_up_waits_its_own_delay() -> None:
    run = Run(Policy(min_replicas=0, max_replicas=8, scale_up_delay=10), current=1)
    run.at(0.0, obs(24, 0))  # needs 3
    assert run.at(10.0, obs(24, 0)) == 3
    assert run.at(11.0, obs(32, 0)) == 3  # needs 4 now, for 0 s: not yet
    assert run.at(20.0, obs(32, 0)) == 3
    assert run.at(21.0, obs(32, 0)) == 4


def test_a_short_idle_reason_keeps_its_tenths() -> None:
    scaler = Scaler(Policy(min_replicas=0, max_replicas=2, scale_down_delay=1.0))
    scaler.decide(0.0, Observation(demand=1, waiting=0, ready=1), 1)
    decision = scaler.decide(0.3, Observation(demand=0, waiting=0, ready=1), 1)
    for now in (0.6, 0.9, 1.2, 1.5):
        decision = scaler.decide(now, Observation(demand=0, waiting=0, ready=1), 1)
        if decision.changed:
            break
    assert decision.desired == 0
    assert decision.reason.startswith("idle for ") and decision.reason != "idle for 0 s"
    assert "." in decision.reason
