"""The study: calibrate capacity, check the engines keep to their model, run every pair.

For each workload: measure round robin's capacity through one router (closed
loop, queues kept full), then for each strategy and router count send
``load`` times that rate open loop through a fresh stack, and measure TTFT,
throughput and the engines' prefix-cache hit rate over the window after the
warm-up; then, where a target needs it, on the same (warm) stack, the
strategy's own capacity, closed loop. Every router count gets the same
offered rate and the same requests, so a 2-router figure compares with its
1-router one under the same traffic.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.common.processes import StartFailed
from benchmarks.common.procfs import cpu_seconds, machine

from .config import StudyConfig
from .driver import Clients, Sample, Targets, closed_loop, open_loop
from .report import Result, summarize, targets
from .scrape import EngineCounters, scrape
from .stack import Stack, StrategyUnavailable, machine_cpu
from .workloads import arrival_times, make_workload

log = logging.getLogger("routing-study")

STACK_OVERHEAD_S = (0.8, 0.7)
"""Seconds to start a stack, stop it and drain its last requests on a 2-core machine:
a fixed part and one per process (for the estimate; the last full study's pace)."""

MAX_LOW_LOAD_RATIO = 1.2
"""Median measured/model TTFT at low load above which the machine, not the model, is timed."""


def chat_targets(stack: Stack, seed: str) -> Targets:
    """The stack's routers' chat URLs, one drawn per request (seeded)."""
    return Targets([f"{url}/v1/chat/completions" for url in stack.router_urls], seed)


async def measure_capacity(
    cfg: StudyConfig, workload_name: str, log_dir: Path, routers: int = 1
) -> Result:
    """Round robin's completed requests/s with every engine's queue kept non-empty."""
    workload = make_workload(workload_name, cfg.shape, cfg.seed + 1)
    concurrency = 2 * cfg.engines * cfg.engine.max_num_seqs
    async with Stack(
        profiles=cfg.profiles(workload_name),
        strategy="round_robin",
        log_dir=log_dir,
        routers=routers,
    ) as stack:
        clients = Clients(cfg.shape.clients)
        try:
            rate, errors = await closed_loop(
                clients,
                chat_targets(stack, f"{cfg.seed}:{workload_name}:calibration"),
                workload,
                concurrency=concurrency,
                warmup_s=cfg.capacity_warmup_s,
                duration_s=cfg.capacity_s,
            )
        finally:
            await clients.close()
    return {
        "req_s": rate,
        "errors": errors,
        "concurrency": concurrency,
        "strategy": "round_robin",
        "routers": routers,
    }


async def low_load_check(cfg: StudyConfig, rate: float, log_dir: Path) -> Result:
    """Uniform prompts at a low rate: measured TTFT against the model's prefill time.

    Nothing is cached and nothing queues, so TTFT should be the prefill time
    ``prompt_tokens / prefill_tokens_per_s * time_scale``; a large excess means
    the processes are short of CPU and the study's timings would be the
    machine's, not the model's.
    """
    workload = make_workload("uniform", cfg.shape, cfg.seed + 2)
    times = arrival_times(rate, cfg.low_load_s, rng=random.Random(cfg.seed))
    async with Stack(
        profiles=cfg.profiles("uniform"), strategy="round_robin", log_dir=log_dir
    ) as stack:
        clients = Clients(cfg.shape.clients)
        try:
            routes = chat_targets(stack, "low-load")
            begin = await _probe(stack, 0.0, time.monotonic())
            samples = await open_loop(clients, routes, workload, times, drain_s=cfg.drain_s)
            end = await _probe(stack, 0.0, time.monotonic())
        finally:
            await clients.close()
    pairs = [
        (s.ttft, cfg.engine.prefill_seconds(s.prompt_tokens))
        for s in samples
        if s.ok and s.ttft is not None
    ]
    excess = [measured - model for measured, model in pairs]
    ratio = [measured / model for measured, model in pairs if model > 0]
    result: Result = {"rate_req_s": rate, "requests": len(samples), "ok": len(pairs)}
    result |= cpu_shares(begin, end)
    if pairs:
        result |= {
            "model_ttft_median_s": statistics.median(m for _, m in pairs),
            "measured_ttft_median_s": statistics.median(t for t, _ in pairs),
            "excess_median_s": statistics.median(excess),
            "excess_p95_s": sorted(excess)[max(0, int(0.95 * len(excess)) - 1)],
            "ratio_median": statistics.median(ratio),
            "within_model": statistics.median(ratio) <= MAX_LOW_LOAD_RATIO,
        }
    return result


@dataclass(frozen=True, slots=True)
class Probe:
    """Engine counters and CPU seconds (the study's processes; the machine) at one instant."""

    counters: EngineCounters
    ours: float
    busy: float
    total: float


async def _probe(stack: Stack, at: float, t0: float) -> Probe:
    """A :class:`Probe` ``at`` seconds after ``t0``."""
    await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
    counters = await scrape(stack.engine_urls)
    busy, total = machine_cpu()
    return Probe(counters, sum(cpu_seconds(stack.pids).values()) + time.process_time(), busy, total)


def cpu_shares(first: Probe, last: Probe) -> Result:
    """Fractions of the machine's CPU used by the study and by everything else."""
    total = last.total - first.total
    if total <= 0:
        return {}
    ours = (last.ours - first.ours) / total
    busy = (last.busy - first.busy) / total
    return {"cpu_study": round(ours, 3), "cpu_others": round(max(0.0, busy - ours), 3)}


@dataclass(frozen=True, slots=True)
class RunData:
    """What one run of one strategy measured, before pooling with its repeats."""

    samples: list[Sample]
    counters: EngineCounters
    cpu: Result
    capacity: float | None


def measures_capacity(cfg: StudyConfig, workload_name: str, strategy: str, repeat: int) -> bool:
    """Whether this run also measures the strategy's capacity.

    Only on the workloads a capacity target needs (``capacity_workloads``):
    every strategy in its first round, and round robin and the candidates,
    which the target compares, in every round (so the comparison has a spread).
    """
    if workload_name not in cfg.capacity_workloads:
        return False
    return repeat == 0 or strategy in ("round_robin", *cfg.candidates)


async def measure_run(
    cfg: StudyConfig,
    workload_name: str,
    strategy: str,
    rate: float,
    log_dir: Path,
    repeat: int,
    routers: int = 1,
) -> RunData:
    """One open-loop run of ``workload_name`` at ``rate`` through ``strategy``.

    Every strategy and router count gets the same requests at the same
    instants, each to the same router of the stack (repeat ``r`` draws its own).
    """
    workload = make_workload(workload_name, cfg.shape, cfg.seed + 100 * repeat)
    burst = cfg.shape.burst_size if workload.bursty else 1
    draw = f"{cfg.seed}:{workload_name}:{repeat}"
    times = arrival_times(
        rate, cfg.duration_s, rng=random.Random(draw), burst=burst, spread=cfg.shape.burst_spread_s
    )
    capacity: float | None = None
    async with Stack(
        profiles=cfg.profiles(workload_name), strategy=strategy, log_dir=log_dir, routers=routers
    ) as stack:
        clients = Clients(cfg.shape.clients)
        try:
            t0 = time.monotonic()
            first = asyncio.create_task(_probe(stack, cfg.warmup_s, t0))
            last = asyncio.create_task(_probe(stack, cfg.duration_s, t0))
            routes = chat_targets(stack, f"{draw}:routers")
            samples = await open_loop(clients, routes, workload, times, drain_s=cfg.drain_s)
            begin, end = await first, await last
            if measures_capacity(cfg, workload_name, strategy, repeat):
                capacity, _ = await closed_loop(
                    clients,
                    chat_targets(stack, f"{draw}:capacity"),
                    workload,
                    concurrency=2 * cfg.engines * cfg.engine.max_num_seqs,
                    warmup_s=cfg.capacity_warmup_s,
                    duration_s=cfg.capacity_s,
                )
        finally:
            await clients.close()
    return RunData(samples, end.counters - begin.counters, cpu_shares(begin, end), capacity)


def window_ttfts(cfg: StudyConfig, run: RunData) -> list[float]:
    """The TTFTs of a run's measured window (``inf`` for a failed request), for the bootstrap."""
    return [
        s.ttft if s.ok and s.ttft is not None else math.inf
        for s in run.samples
        if cfg.warmup_s <= s.sent < cfg.duration_s
    ]


def pool(
    cfg: StudyConfig,
    workload_name: str,
    strategy: str,
    rate: float,
    runs: list[RunData],
    routers: int = 1,
) -> Result:
    """One result from a strategy's repeats: samples pooled, counters summed."""
    samples = [sample for run in runs for sample in run.samples]
    counters = EngineCounters()
    for run in runs:
        counters = counters + run.counters
    result: Result = {
        "workload": workload_name,
        "strategy": strategy,
        "routers": routers,
        "offered_req_s": rate,
        "repeats": len(runs),
    }
    result |= summarize(samples, start=cfg.warmup_s, end=cfg.duration_s, runs=len(runs))
    result["ttft_p95_by_repeat_s"] = [
        summarize(run.samples, start=cfg.warmup_s, end=cfg.duration_s)["ttft_p95_s"] for run in runs
    ]
    capacities = [run.capacity for run in runs]
    measured = [c for c in capacities if c is not None]
    result["capacity_req_s"] = statistics.mean(measured) if measured else None
    result["capacity_by_repeat_req_s"] = capacities
    result["prefix_cache_hit_rate"] = counters.hit_rate
    for key in ("cpu_study", "cpu_others"):
        values = [run.cpu[key] for run in runs if key in run.cpu]
        if values:
            result[key] = round(statistics.mean(values), 3)
    return result


Key = tuple[int, str, str]
"""(routers, workload, strategy): what a result is of."""


async def run_workload(
    cfg: StudyConfig, workload_name: str, rate: float, log_dir: Path
) -> tuple[list[Result], dict[Key, list[list[float]]]]:
    """Every strategy at every router count on one workload, repeats interleaved (odd
    repeats in reverse order, so neither order nor drift favours a pair); the results,
    and each pair's measured TTFTs round by round."""
    pairs = [(routers, s) for routers in cfg.routers for s in cfg.strategies_for(routers)]
    data: dict[tuple[int, str], list[RunData]] = {pair: [] for pair in pairs}
    failed: dict[tuple[int, str], str] = {}
    for repeat in range(cfg.repeats):
        order = pairs if repeat % 2 == 0 else list(reversed(pairs))
        for routers, strategy in order:
            if (routers, strategy) in failed:
                continue
            suffix = "" if routers == 1 else f"-{routers}r"
            run_dir = log_dir / f"{workload_name}-{strategy}{suffix}-{repeat}"
            try:
                run = await measure_run(
                    cfg, workload_name, strategy, rate, run_dir, repeat, routers
                )
            except StrategyUnavailable as exc:
                log.warning("%s: not available in this router (%s)", strategy, exc)
                failed[(routers, strategy)] = "unavailable"
                continue
            except StartFailed as exc:
                log.error("%s/%s did not start: %s", workload_name, strategy, exc)
                failed[(routers, strategy)] = "start failed"
                continue
            data[(routers, strategy)].append(run)
            one = pool(cfg, workload_name, strategy, rate, [run], routers)
            log.info(
                "%s %s ×%d #%d: TTFT p50 %s p95 %s, hit rate %s, capacity %s, CPU %s / %s",
                workload_name, strategy, routers, repeat, one["ttft_p50_s"], one["ttft_p95_s"],
                one["prefix_cache_hit_rate"], one["capacity_req_s"], one.get("cpu_study"),
                one.get("cpu_others"),
            )  # fmt: skip
    results: list[Result] = []
    for routers, strategy in pairs:
        if (routers, strategy) in failed:
            error = failed[(routers, strategy)]
            results.append(
                {"workload": workload_name, "strategy": strategy, "routers": routers}
                | {"error": error}
            )
        else:
            runs = data[(routers, strategy)]
            results.append(pool(cfg, workload_name, strategy, rate, runs, routers))
    ttfts = {
        (routers, workload_name, strategy): [window_ttfts(cfg, run) for run in runs]
        for (routers, strategy), runs in data.items()
        if runs
    }
    return results, ttfts


def estimate_s(cfg: StudyConfig) -> float:
    """About how long the study takes (seconds): what :func:`run_study` will run, each part
    at its planned length plus a stack's start and stop."""
    fixed, per_process = STACK_OVERHEAD_S
    capacity = cfg.capacity_warmup_s + cfg.capacity_s
    one_router = fixed + per_process * (cfg.engines + 1)
    total = (one_router + capacity) * len(cfg.workloads)  # the calibrations
    total += one_router + cfg.low_load_s  # the low-load check
    for workload in cfg.workloads:
        for routers in cfg.routers:
            for strategy in cfg.strategies_for(routers):
                for repeat in range(cfg.repeats):
                    total += fixed + per_process * (cfg.engines + routers) + cfg.duration_s
                    if measures_capacity(cfg, workload, strategy, repeat):
                        total += capacity
    return total


async def run_study(cfg: StudyConfig, log_dir: Path) -> Result:
    results: Result = {"config": asdict(cfg), "machine": machine(), "capacity": {}, "runs": []}
    ttfts: dict[Key, list[list[float]]] = {}
    for workload_name in cfg.workloads:
        calibration = min(cfg.routers)
        capacity = await measure_capacity(
            cfg, workload_name, log_dir / f"capacity-{workload_name}", calibration
        )
        results["capacity"][workload_name] = capacity
        log.info("capacity of %s: %.1f req/s", workload_name, capacity["req_s"])
        if "low_load_check" not in results:
            rate = cfg.low_load * capacity["req_s"]
            check = await low_load_check(cfg, rate, log_dir / "low-load")
            results["low_load_check"] = check
            log.info("low-load check: %s", check)
        rate = cfg.load * capacity["req_s"]
        runs, workload_ttfts = await run_workload(cfg, workload_name, rate, log_dir)
        results["runs"] += runs
        ttfts |= workload_ttfts
    results["targets"] = targets(
        results["runs"], candidates=cfg.candidates, ttfts=ttfts, seed=cfg.seed
    )
    return results
