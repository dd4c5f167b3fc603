"""The study's knobs in one place: the engine profile, the workloads, the run plan.

Durations of the engine profile are *simulated* seconds; ``time_scale``
turns them into wall-clock seconds (0.1: ten times faster than the model).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import get_args

from llmsvc.router.settings import Strategy

STRATEGIES: tuple[str, ...] = get_args(Strategy)
WORKLOADS = ("uniform", "shared_prefix", "bursts", "heterogeneous")
SCRAPING = ("least_load", "scored")
"""Strategies that scrape the engines' metrics (they get a scaled scrape interval)."""
MODEL = "sim-model"


@dataclass(frozen=True, slots=True)
class EngineProfile:
    """The flags of every ``llmsvc sim-engine`` of the study."""

    max_num_seqs: int = 4
    prefill_tokens_per_s: float = 4000.0
    decode_tokens_per_s: float = 40.0
    prefix_cache_tokens: int = 12288
    kv_cache_tokens: int = 65536
    time_scale: float = 0.2
    chars_per_token: float = 4.0

    def flags(self) -> list[str]:
        return [
            "--max-num-seqs", str(self.max_num_seqs),
            "--prefill-tokens-per-s", str(self.prefill_tokens_per_s),
            "--decode-tokens-per-s", str(self.decode_tokens_per_s),
            "--prefix-cache-tokens", str(self.prefix_cache_tokens),
            "--kv-cache-tokens", str(self.kv_cache_tokens),
            "--time-scale", str(self.time_scale),
            "--chars-per-token", str(self.chars_per_token),
        ]  # fmt: skip

    def router_flags(self, strategy: str) -> list[str]:
        """Router timings that race the engines' are scaled like the engines' durations.

        ``least_load`` and ``scored`` scrape every second by default: one
        simulated second is ``time_scale`` seconds here, so the scrape keeps
        its pace relative to the requests it balances.
        """
        if strategy in SCRAPING:
            return ["--load-scrape-interval", f"{self.time_scale:g}"]
        return []

    def faster(self, factor: float) -> EngineProfile:
        """This profile with prefill and decode ``factor`` times as fast (a bigger GPU)."""
        return replace(
            self,
            prefill_tokens_per_s=self.prefill_tokens_per_s * factor,
            decode_tokens_per_s=self.decode_tokens_per_s * factor,
        )

    def prefill_seconds(self, tokens: int) -> float:
        """Wall-clock prefill time of ``tokens`` uncached tokens (the model's TTFT alone)."""
        return tokens / self.prefill_tokens_per_s * self.time_scale


@dataclass(frozen=True, slots=True)
class WorkloadShape:
    """Sizes of the three workloads, in tokens (4 characters each)."""

    max_tokens: int = 12
    uniform_prompt_tokens: tuple[int, int] = (200, 2400)
    system_prompts: int = 8
    system_prompt_tokens: tuple[int, int] = (1500, 2500)
    user_tokens: tuple[int, int] = (30, 120)
    session_turns: tuple[int, int] = (3, 8)
    live_sessions: int = 48
    burst_size: int = 16
    burst_spread_s: float = 0.05
    clients: int = 64


@dataclass(frozen=True, slots=True)
class StudyConfig:
    """What one ``python -m benchmarks.routing`` run does."""

    engines: int = 4
    engine: EngineProfile = field(default_factory=EngineProfile)
    shape: WorkloadShape = field(default_factory=WorkloadShape)
    strategies: tuple[str, ...] = STRATEGIES
    workloads: tuple[str, ...] = WORKLOADS
    routers: tuple[int, ...] = (1,)
    """Router replicas in front of the engines; one pass of the study per count."""
    strategies_multi: tuple[str, ...] = ("round_robin", "prefix_affinity", "scored")
    """The strategies run with more than one router (those of ``strategies`` among them,
    by their whole label: ``scored+score-queue-weight=2`` only when named so)."""
    candidates: tuple[str, ...] = ("scored",)
    """Strategies checked against the issue's targets."""
    fast_engine_factor: float = 2.0
    """How much faster engine 0 is than the others in the ``heterogeneous`` workload."""
    capacity_workloads: tuple[str, ...] = ("shared_prefix",)
    """Workloads on which every strategy's own capacity is measured (a target needs it)."""
    load: float = 0.8
    duration_s: float = 12.0
    warmup_s: float = 3.0
    drain_s: float = 15.0
    capacity_s: float = 4.0
    capacity_warmup_s: float = 1.5
    low_load: float = 0.05
    low_load_s: float = 6.0
    seed: int = 1
    repeats: int = 3
    plots: bool = True

    def profiles(self, workload: str) -> tuple[EngineProfile, ...]:
        """Each engine's profile: all alike, but engine 0 faster in ``heterogeneous``."""
        if workload == "heterogeneous":
            fast = self.engine.faster(self.fast_engine_factor)
            return (fast,) + (self.engine,) * (self.engines - 1)
        return (self.engine,) * self.engines

    def strategies_for(self, routers: int) -> tuple[str, ...]:
        """The strategies of the pass with ``routers`` routers."""
        if routers == 1:
            return self.strategies
        return tuple(s for s in self.strategies if s in self.strategies_multi)

    def smoke(self) -> StudyConfig:
        """Two engines, one workload, two strategies at one router and one of them at two,
        a few seconds: the test-suite run (least connections stands in for the candidate)."""
        return replace(
            self,
            engines=2,
            strategies=("round_robin", "least_connections"),
            workloads=("shared_prefix",),
            routers=(1, 2),
            strategies_multi=("least_connections",),
            candidates=("least_connections",),
            duration_s=2.5,
            warmup_s=0.5,
            drain_s=5.0,
            capacity_s=1.0,
            capacity_warmup_s=0.5,
            low_load_s=1.0,
            repeats=1,
            plots=False,
        )
