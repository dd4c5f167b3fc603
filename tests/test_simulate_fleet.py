"""``llmsvc.simulate.simulate``: the policies, the router's hold, the scaling code it calls."""

from __future__ import annotations

import dataclasses

import pytest

from llmsvc.autoscale import policy as autoscale_policy
from llmsvc.autoscale import wake as autoscale_wake
from llmsvc.autoscale.policy import Decision, Observation, Policy, Scaler
from llmsvc.simulate import (
    POLICIES,
    EngineTiming,
    SimConfig,
    SimResult,
    Trace,
    load_trace,
    simulate,
)
from llmsvc.simulate.timing import engine_timing

TIMING = EngineTiming(startup_delay=20.0, wake_delay=1.5)


def _config(trace: str | Trace = "steady", **changes: object) -> SimConfig:
    if isinstance(trace, str):
        trace = load_trace(trace, duration=120.0, rate=4.0, seed=3)
    base = SimConfig(
        trace=trace,
        workers=3,
        seed=3,
        timing=TIMING,
        idle_timeout=5.0,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize("trace", ["steady", "bursty", "diurnal", "spike-from-zero"])
@pytest.mark.parametrize("policy", POLICIES)
def test_every_request_is_answered_or_rejected(trace: str, policy: str) -> None:
    config = _config(trace, policy=policy)
    result = simulate(config)
    assert len(result.requests) == len(config.trace) > 0
    assert result.answered + result.rejected == len(config.trace)
    for req in result.requests:
        assert req.outcome in ("ok", "hold_timeout", "queue_timeout", "queue_full")
        assert req.end >= req.arrival
        if req.outcome == "ok":
            assert req.arrival <= req.first_token <= req.end
    demand_after = [s.demand for s in result.timeline if s.t > result.end - 1e-9]
    assert all(d == 0 for d in demand_after)


def test_fixed_fleet_costs_workers_times_duration_and_never_cold_starts() -> None:
    trace = Trace("light", 100.0, (1.0, 2.0, 50.0), (64, 64, 64), (8, 8, 8))
    result = simulate(SimConfig(trace=trace, policy="fixed", workers=4, timing=TIMING))
    assert result.cold_starts == 0 and result.wakes == 0 and result.held == 0
    assert result.gpu_seconds == pytest.approx(4 * 100.0)
    assert result.end == 100.0


def test_autoscale_zero_holds_the_first_requests_through_a_cold_start() -> None:
    result = simulate(_config("spike-from-zero", policy="autoscale-zero", hold_timeout=60.0))
    assert result.cold_starts >= 1
    first = result.requests[0]
    assert first.arrival >= 0.4 * 120.0  # the spike's first request, after the idle part
    assert first.held_s >= TIMING.startup_delay
    assert first.ttft is not None and first.ttft >= TIMING.startup_delay
    assert result.held > 0 and result.rejected == 0
    # Nothing ran before the spike: the GPU-seconds are a fraction of the fixed fleet's.
    fixed = simulate(_config("spike-from-zero", policy="fixed"))
    assert result.gpu_seconds < fixed.gpu_seconds


def test_a_short_hold_timeout_rejects_the_requests_of_a_cold_start() -> None:
    result = simulate(_config("spike-from-zero", policy="autoscale-zero", hold_timeout=5.0))
    rejected = [r for r in result.requests if r.outcome == "hold_timeout"]
    assert rejected and result.rejected == len(rejected)
    assert all(r.held_s == pytest.approx(5.0) for r in rejected)


def test_autoscale_starts_with_one_engine_and_grows_with_demand() -> None:
    result = simulate(_config("spike-from-zero", policy="autoscale"))
    assert result.timeline[0].replicas == 1 and result.timeline[0].ready == 1
    assert result.cold_starts >= 1
    assert max(s.replicas for s in result.timeline) > 1
    assert max(s.replicas for s in result.timeline) <= 3  # max_replicas = workers


def test_standby_engines_sleep_when_idle_and_one_wakes_for_a_held_request() -> None:
    """--wake-target 0: only the first engine, the woken one then serves the spike."""
    result = simulate(_config("spike-from-zero", policy="standby", standby="sleep", wake_target=0))
    assert result.wakes == 1
    first = result.requests[0]
    assert first.held_s == pytest.approx(TIMING.wake_delay)
    idle_part = [s for s in result.timeline if 10.0 < s.t < 0.4 * 120.0]
    assert idle_part and all(s.replicas == 0 for s in idle_part)
    stop = simulate(
        _config("spike-from-zero", policy="standby", standby="stop", hold_timeout=60, wake_target=0)
    )
    assert stop.wakes == 1
    assert stop.requests[0].held_s == pytest.approx(TIMING.startup_delay)


@pytest.mark.parametrize(
    ("burst", "target", "wakes"),
    [
        (1, 8, 1),  # a single held request wakes exactly one
        (8, 8, 1),
        (9, 8, 2),  # ceil(9 / 8)
        (20, 8, 3),
        (40, 8, 3),  # never more than are in standby
        (20, 0, 1),  # --wake-target 0: only the first
    ],
)
def test_a_burst_at_zero_wakes_engines_for_its_demand(burst: int, target: int, wakes: int) -> None:
    """Every engine in standby (idle since 0), then ``burst`` requests at once."""
    trace = Trace("burst", 60.0, (20.0,) * burst, (16,) * burst, (20,) * burst)
    config = _config(trace, policy="standby", standby="sleep", wake_target=target)
    result = simulate(config)
    assert result.wakes == wakes
    assert all(r.held_s == pytest.approx(TIMING.wake_delay) for r in result.requests)


def test_an_awake_engine_under_load_gets_the_standby_ones_woken() -> None:
    """Engine 0 kept busy (least_connections: the lowest index), 1 and 2 in standby; then
    20 long requests at once: with --wake-target 8 the demand (21) wakes the two others
    although nothing is held (the 20 are already at engine 0: the router sends at once),
    and 20 more a little later go to them, so TTFT falls; with 0 all queue on engine 0."""
    keep = tuple(float(t) for t in range(0, 19, 2))  # one short request every 2 s
    arrivals = keep + (19.0,) * 20 + (25.0,) * 20
    tokens = (4,) * len(keep) + (200,) * 40
    trace = Trace("busy", 120.0, arrivals, (16,) * len(arrivals), tokens)
    grows = simulate(_config(trace, policy="standby", standby="sleep"))
    fixed = simulate(_config(trace, policy="standby", standby="sleep", wake_target=0))
    assert fixed.wakes == 0 and grows.wakes == 2
    assert all(r.held_s == 0 for r in grows.requests)  # never held: engine 0 was ready
    assert {r.engine for r in grows.requests[-20:]} == {1, 2}  # 0 has the 20 before
    assert {r.engine for r in fixed.requests[len(keep) :]} == {0}
    grown, alone = grows.summary()["ttft_s"], fixed.summary()["ttft_s"]
    assert grown["p95"] < alone["p95"]


def test_standby_with_no_idle_timeout_is_a_fixed_fleet() -> None:
    standby = simulate(_config("bursty", policy="standby", idle_timeout=0.0))
    fixed = simulate(_config("bursty", policy="fixed"))
    assert standby.wakes == 0
    assert standby.summary() | {"policy": "fixed"} == fixed.summary()


def test_the_decisions_are_the_autoscale_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[float, Observation, int]] = []
    real = Scaler.decide

    def spy(self: Scaler, now: float, obs: Observation, current: int) -> Decision:
        calls.append((now, obs, current))
        return real(self, now, obs, current)

    monkeypatch.setattr(autoscale_policy.Scaler, "decide", spy)
    simulate(_config("spike-from-zero", policy="autoscale-zero", autoscale_interval=2.0))
    assert len(calls) >= 120 / 2.0
    assert [now for now, _, _ in calls[:3]] == [0.0, 2.0, 4.0]
    assert any(obs.waiting > 0 and current == 0 for _, obs, current in calls)

    def never(self: Scaler, now: float, obs: Observation, current: int) -> Decision:
        return Decision(desired=current, current=current, reason="test")

    monkeypatch.setattr(autoscale_policy.Scaler, "decide", never)
    frozen = simulate(_config("spike-from-zero", policy="autoscale-zero"))
    assert frozen.cold_starts == 0 and frozen.answered == 0  # nothing scaled: all held, rejected


def test_the_policy_given_is_the_one_scaled_by(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Policy] = []
    init = Scaler.__init__

    def record(self: Scaler, policy: Policy) -> None:
        seen.append(policy)
        init(self, policy)

    monkeypatch.setattr(autoscale_policy.Scaler, "__init__", record)
    given = Policy(min_replicas=1, max_replicas=7, target_requests=3, scale_down_delay=10)
    simulate(_config(policy="autoscale-zero", autoscale=given))
    simulate(_config(policy="autoscale", autoscale=given))
    assert seen == [
        dataclasses.replace(given, min_replicas=0),
        given,
    ]


def test_wakes_are_decided_by_to_wake(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(autoscale_wake, "to_wake", lambda **counts: 0)
    result = simulate(_config("spike-from-zero", policy="standby", hold_timeout=3.0))
    assert result.wakes == 0 and result.answered == 0 and result.rejected > 0


def test_the_same_seed_gives_the_same_result() -> None:
    def run(seed: int) -> list[dict[str, object]]:
        config = _config(
            "bursty", policy="autoscale-zero", seed=seed, timing=EngineTiming(step_noise=0.2)
        )
        result: SimResult = simulate(config)
        return [r.as_dict() for r in result.requests]

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_progress_reaches_one() -> None:
    seen: list[float] = []
    simulate(_config(), seen.append)
    assert seen[-1] == 1.0 and seen == sorted(seen) and len(seen) > 10


def test_a_request_longer_than_the_kv_cache_is_rejected() -> None:
    trace = Trace("long", 10.0, (1.0, 2.0), (100, 5000), (10, 10))
    timing = EngineTiming(kv_cache_tokens=2048)
    result = simulate(SimConfig(trace=trace, workers=1, timing=timing))
    assert [r.outcome for r in result.requests] == ["ok", "context_length"]


def test_bad_configs_are_refused() -> None:
    trace = Trace("t", 1.0, (), (), ())
    with pytest.raises(ValueError, match="unknown policy"):
        SimConfig(trace=trace, policy="magic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="workers"):
        SimConfig(trace=trace, workers=0)
    with pytest.raises(ValueError, match="decode_tokens_per_s"):
        EngineTiming(decode_tokens_per_s=0)


@pytest.mark.parametrize(("policy", "floor"), [("autoscale", 1), ("autoscale-zero", 0)])
def test_after_the_spike_the_fleet_drains_back_to_its_minimum(policy: str, floor: int) -> None:
    quick = Policy(min_replicas=1, max_replicas=3, target_requests=2, scale_down_delay=5.0)
    trace = load_trace("spike-from-zero", duration=200.0, rate=1.0, seed=3)
    config = _config(trace, policy=policy, autoscale=quick, hold_timeout=60.0)
    result = simulate(config)
    assert result.answered == len(config.trace)  # draining engines finish what they hold
    assert max(s.replicas for s in result.timeline) == 3
    tail = [s for s in result.timeline if s.t > 0.6 * 200.0 + 15.0]
    assert tail and all(s.replicas == floor for s in tail)
    assert result.gpu_seconds < simulate(_config(trace, policy="fixed")).gpu_seconds


def test_the_router_strategy_picks_the_engine() -> None:
    # Spaced requests, each done before the next: least_connections keeps to the first engine
    # (fewest in flight, lowest index), round_robin takes each in turn.
    trace = Trace("spaced", 12.0, tuple(float(t) for t in range(6)), (16,) * 6, (4,) * 6)
    least = simulate(SimConfig(trace=trace, workers=3, timing=TIMING))
    turns = simulate(SimConfig(trace=trace, workers=3, timing=TIMING, strategy="round_robin"))
    assert [r.engine for r in least.requests] == [0] * 6
    assert [r.engine for r in turns.requests] == [0, 1, 2, 0, 1, 2]
    busy = Trace("together", 12.0, (0.0,) * 6, (16,) * 6, (40,) * 6)
    spread = simulate(SimConfig(trace=busy, workers=3, timing=TIMING))
    assert sorted(r.engine for r in spread.requests) == [0, 0, 1, 1, 2, 2]


def test_router_slots_queue_requests_in_order() -> None:
    trace = Trace("four", 10.0, (0.0, 0.0, 0.0, 0.0), (16,) * 4, (20,) * 4)
    result = simulate(SimConfig(trace=trace, workers=2, timing=TIMING, backend_concurrency=1))
    first, second, third, fourth = result.requests
    assert (first.engine, second.engine) == (0, 1) and first.queued_s == second.queued_s == 0
    assert third.queued_s == pytest.approx(first.end) and fourth.queued_s > 0
    assert third.started == pytest.approx(first.end)
    assert result.queued == 2 and result.answered == 4
    unlimited = simulate(SimConfig(trace=trace, workers=2, timing=TIMING))
    assert unlimited.queued == 0 and max(r.ttft or 0 for r in unlimited.requests) < max(
        r.ttft or 0 for r in result.requests
    )


def test_the_router_queue_times_out_and_fills() -> None:
    trace = Trace("many", 30.0, (0.0,) * 4, (16,) * 4, (400,) * 4)  # 10 s each
    config = SimConfig(
        trace=trace, workers=1, timing=TIMING, backend_concurrency=1, queue_timeout=5.0,
        queue_size=2,
    )  # fmt: skip
    result = simulate(config)
    assert [r.outcome for r in result.requests] == ["ok", "queue_timeout", "queue_timeout",
                                                    "queue_full"]  # fmt: skip
    assert result.requests[1].queued_s == pytest.approx(5.0)
    assert result.summary()["rejected_by_reason"]["queue_timeout"] == 2


def test_with_slots_a_held_burst_waits_for_the_next_engines() -> None:
    """Without slots, every held request goes to the first engine ready and queues there;
    with them, the router keeps the overflow for the engines that start next."""
    quick = Policy(min_replicas=0, max_replicas=3, target_requests=2)
    trace = load_trace("spike-from-zero", duration=120.0, rate=2.0, seed=3)

    def engines_of_the_held(**changes: object) -> set[int]:
        result = simulate(
            _config(trace, policy="autoscale-zero", autoscale=quick, hold_timeout=60.0, **changes)
        )
        return {r.engine for r in result.requests if r.held_s > 0}

    assert engines_of_the_held() == {0}
    assert len(engines_of_the_held(backend_concurrency=4)) > 1


def test_the_observation_is_what_the_operator_reads_from_demand(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[tuple[Observation, int]] = []
    real = Scaler.decide

    def spy(self: Scaler, now: float, obs: Observation, current: int) -> Decision:
        seen.append((obs, current))
        return real(self, now, obs, current)

    monkeypatch.setattr(autoscale_policy.Scaler, "decide", spy)
    kv = Policy(min_replicas=0, max_replicas=3, metric="kvCache", target_kv_cache=0.001)
    result = simulate(_config("spike-from-zero", policy="autoscale-zero", autoscale=kv))
    assert all(obs.kv_cache is None for obs, _ in seen if obs.ready == 0)
    loaded = [obs.kv_cache for obs, _ in seen if obs.ready and obs.demand]
    assert loaded and all(k is not None and 0 < k <= 1 for k in loaded)
    assert all(obs.demand >= obs.waiting >= 0 for obs, _ in seen)
    assert any(obs.waiting and current == 0 for obs, current in seen)
    assert max(s.replicas for s in result.timeline) == 3  # a tiny KV target wants them all


def test_standby_as_the_babysitter_sees_it_at_its_health_checks() -> None:
    trace = Trace("one", 20.0, (0.3,), (16,), (8,))

    def standby_at(interval: float) -> tuple[float, float]:
        config = SimConfig(
            trace=trace, policy="standby", workers=1, timing=TIMING, idle_timeout=5.0,
            idle_check_interval=interval, sample_interval=0.01,
        )  # fmt: skip
        result = simulate(config)
        first_off = next(s.t for s in result.timeline if s.replicas == 0)
        return result.requests[0].end, first_off

    end, exact = standby_at(0.0)
    assert exact == pytest.approx(end + 5.0, abs=0.011)
    # Checks at 1, 2, ... s: the first (t=1) finds it idle and starts the clock; t=6 ends it.
    _, checked = standby_at(1.0)
    assert checked == pytest.approx(6.0, abs=0.011)
    _, coarse = standby_at(4.0)  # checks at 4 (clock starts), 8 (4 s: not yet), 12
    assert coarse == pytest.approx(12.0, abs=0.011)


def test_a_compressed_diurnal_day_on_standby_grows_back() -> None:
    """Part F's finding, small: 5 llama.cpp engines (2 sequences each) over a diurnal
    trace compressed into 600 s. With --wake-target 0 the engine left awake after the
    quiet start serves the peak alone (TTFT p95 in the hundreds of seconds); with the
    default 8 the standby ones are woken and p95 is a few seconds."""
    timing = engine_timing("llama.cpp-smollm2-cpu")
    trace = load_trace("diurnal", duration=600.0, rate=2.0, seed=0)
    base = SimConfig(trace=trace, policy="standby", workers=5, timing=timing)
    old = simulate(dataclasses.replace(base, wake_target=0))
    new = simulate(base)
    assert old.wakes <= 1 < new.wakes
    old_p95, new_p95 = old.summary()["ttft_s"]["p95"], new.summary()["ttft_s"]["p95"]
    assert old_p95 > 100 and new_p95 < old_p95 / 20, (old_p95, new_p95)


@pytest.mark.parametrize("policy", ["fixed", "autoscale", "autoscale-zero"])
def test_the_wake_target_changes_only_standby(policy: str) -> None:
    runs = [simulate(_config("bursty", policy=policy, wake_target=t)) for t in (0, 8, 1)]
    assert runs[0].summary() == runs[1].summary() == runs[2].summary()
