"""The simulated side: ``llmsvc.simulate`` over the same CSV and profile as the real side.

The one place the benchmarks call the simulator, so that they read its results
through one small shape (:class:`SimSide`) whatever else a ``SimResult`` carries.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.autoscale.trace import read_csv

from llmsvc.autoscale.policy import Policy
from llmsvc.simulate import PolicyName, SimConfig, engine_timing, load_trace, simulate
from llmsvc.simulate.events import Strategy

if TYPE_CHECKING:
    from benchmarks.autoscale.study import Settings


@dataclass(frozen=True, slots=True)
class RouterModel:
    """The settings of the real side that the simulation must share: the babysitters'
    health interval (their idle checks), the router's ``--wake-target`` and
    ``--strategy``."""

    health_interval: float = 0.2
    wake_target: float = 8.0
    strategy: Strategy = "round_robin"


HOLD_TIMEOUT_S = 120.0
"""The router's ``--hold-timeout`` on both sides of the agreement: long enough for any wake."""


@dataclass(frozen=True, slots=True)
class SimSide:
    """What the agreement table needs from one simulation."""

    requests: int
    ttfts: list[float]
    wakes: int
    holds: list[float]
    """Seconds each held request was held for a ready engine."""
    by_request: list[tuple[float | None, float]]
    """(TTFT or None, seconds held) of every request, in the trace's order."""
    rejected: int
    cold_starts: int


def run_simulation(
    csv_path: Path,
    *,
    profile: Path,
    workers: int,
    idle_timeout: float,
    seed: int,
    router: RouterModel,
) -> SimSide:
    """``llmsvc simulate --policy standby --standby sleep`` of the CSV with the engines of
    ``profile`` (its ``wake_delay`` the wake's length) and the real side's router and
    babysitter settings (``router``)."""
    duration = read_csv(csv_path)[-1].arrival_s + 1.0
    trace = load_trace(str(csv_path), duration=duration, rate=1.0, seed=seed)
    timing = engine_timing(str(profile))
    config = SimConfig(
        trace=trace, policy="standby", workers=workers, seed=seed, timing=timing,
        idle_timeout=idle_timeout, standby="sleep", hold_timeout=HOLD_TIMEOUT_S,
        idle_check_interval=router.health_interval, wake_target=router.wake_target,
        strategy=router.strategy,
        # A babysitter advertises its engine's max_num_seqs as max_concurrency: the real
        # router's slots per engine, beyond which it queues a request itself.
        backend_concurrency=timing.max_num_seqs,
    )  # fmt: skip
    result = simulate(config)
    return SimSide(
        requests=len(result.requests),
        ttfts=[r.first_token - r.arrival for r in result.requests if r.first_token >= 0],
        wakes=result.wakes,
        holds=[r.held_s for r in result.requests if r.held_s > 0],
        by_request=[
            (r.first_token - r.arrival if r.first_token >= 0 else None, r.held_s)
            for r in sorted(result.requests, key=lambda r: r.index)
        ],
        rejected=result.rejected,
        cold_starts=result.cold_starts,
    )


@dataclass(frozen=True, slots=True)
class PolicyRun:
    """One trace under one policy: the study's row, and the series its plots draw."""

    trace: str
    policy: str
    summary: dict[str, Any]
    timeline: list[tuple[float, int, int]]
    """(t, replicas up, demand) samples."""
    ttfts: list[tuple[float, float]]
    """(arrival, TTFT) of every answered request."""


def run_policy(trace_name: str, policy: PolicyName, settings: Settings) -> PolicyRun:
    """One built-in trace under one policy with the study's fleet."""
    trace = load_trace(
        trace_name, duration=settings.duration, rate=settings.rate, seed=settings.seed,
        prompt_tokens=settings.prompt_tokens, output_tokens=settings.output_tokens,
    )  # fmt: skip
    scaling = Policy(
        min_replicas=1, max_replicas=settings.workers, target_requests=settings.target_requests,
        scale_up_delay=settings.scale_up_delay, scale_down_delay=settings.scale_down_delay,
    )  # fmt: skip
    config = SimConfig(
        trace=trace, policy=policy, workers=settings.workers,
        seed=settings.seed, autoscale=scaling, hold_timeout=settings.hold_timeout,
        autoscale_interval=settings.autoscale_interval,
        timing=engine_timing(settings.profile, startup_delay=settings.startup_delay),
    )  # fmt: skip
    result = simulate(config)
    s = result.summary()
    summary = {
        "gpu_seconds": s["gpu_seconds"],
        "ttft_p50_s": s["ttft_s"]["p50"],
        "ttft_p95_s": s["ttft_s"]["p95"],
        "ttft_p99_s": s["ttft_s"]["p99"],
        "requests": s["requests"],
        "answered": s["answered"],
        "held": s["held"],
        "rejected": s["rejected"],
        "cold_starts": s["cold_starts"],
        "max_replicas": s["max_replicas"],
    }
    return PolicyRun(
        trace=trace_name,
        policy=policy,
        summary=summary,
        timeline=[(p.t, p.replicas, p.demand) for p in result.timeline],
        ttfts=[
            (r.arrival, r.first_token - r.arrival) for r in result.requests if r.first_token >= 0
        ],
    )
