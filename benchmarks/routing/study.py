"""The study: calibrate capacity, check the engines keep to their model, run every pair.

For each workload: measure round robin's capacity (closed loop, queues kept
full), then for each strategy send ``load`` times that rate open loop through
a fresh stack, and measure TTFT, throughput and the engines' prefix-cache hit
rate over the window after the warm-up; then, on the same (warm) stack, the
strategy's own capacity, closed loop.
"""

from __future__ import annotations

import asyncio
import logging
import random
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.common.procfs import cpu_seconds, machine

from .config import StudyConfig
from .driver import Clients, Sample, closed_loop, open_loop
from .report import Result, summarize, targets
from .scrape import EngineCounters, scrape
from .stack import Stack, StartFailed, StrategyUnavailable, machine_cpu
from .workloads import arrival_times, make_workload

log = logging.getLogger("routing-study")

MAX_LOW_LOAD_RATIO = 1.2
"""Median measured/model TTFT at low load above which the machine, not the model, is timed."""


async def measure_capacity(cfg: StudyConfig, workload_name: str, log_dir: Path) -> Result:
    """Round robin's completed requests/s with every engine's queue kept non-empty."""
    workload = make_workload(workload_name, cfg.shape, cfg.seed + 1)
    concurrency = 2 * cfg.engines * cfg.engine.max_num_seqs
    async with Stack(
        engines=cfg.engines, profile=cfg.engine, strategy="round_robin", log_dir=log_dir
    ) as stack:
        clients = Clients(cfg.shape.clients)
        try:
            rate, errors = await closed_loop(
                clients,
                f"{stack.router_url}/v1/chat/completions",
                workload,
                concurrency=concurrency,
                warmup_s=cfg.capacity_warmup_s,
                duration_s=cfg.capacity_s,
            )
        finally:
            await clients.close()
    return {"req_s": rate, "errors": errors, "concurrency": concurrency, "strategy": "round_robin"}


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
        engines=cfg.engines, profile=cfg.engine, strategy="round_robin", log_dir=log_dir
    ) as stack:
        clients = Clients(cfg.shape.clients)
        try:
            url = f"{stack.router_url}/v1/chat/completions"
            begin = await _probe(stack, 0.0, time.monotonic())
            samples = await open_loop(clients, url, workload, times, drain_s=cfg.drain_s)
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


async def measure_run(
    cfg: StudyConfig, workload_name: str, strategy: str, rate: float, log_dir: Path, repeat: int
) -> RunData:
    """One open-loop run of ``workload_name`` at ``rate`` through ``strategy``.

    Every strategy gets the same requests at the same instants (repeat ``r``
    draws its own); the first repeat also measures the strategy's capacity.
    """
    workload = make_workload(workload_name, cfg.shape, cfg.seed + 100 * repeat)
    burst = cfg.shape.burst_size if workload.bursty else 1
    times = arrival_times(
        rate,
        cfg.duration_s,
        rng=random.Random(f"{cfg.seed}:{workload_name}:{repeat}"),
        burst=burst,
        spread=cfg.shape.burst_spread_s,
    )
    capacity: float | None = None
    async with Stack(
        engines=cfg.engines, profile=cfg.engine, strategy=strategy, log_dir=log_dir
    ) as stack:
        clients = Clients(cfg.shape.clients)
        try:
            t0 = time.monotonic()
            first = asyncio.create_task(_probe(stack, cfg.warmup_s, t0))
            last = asyncio.create_task(_probe(stack, cfg.duration_s, t0))
            url = f"{stack.router_url}/v1/chat/completions"
            samples = await open_loop(clients, url, workload, times, drain_s=cfg.drain_s)
            begin, end = await first, await last
            if repeat == 0:
                capacity, _ = await closed_loop(
                    clients,
                    url,
                    workload,
                    concurrency=2 * cfg.engines * cfg.engine.max_num_seqs,
                    warmup_s=cfg.capacity_warmup_s,
                    duration_s=cfg.capacity_s,
                )
        finally:
            await clients.close()
    return RunData(samples, end.counters - begin.counters, cpu_shares(begin, end), capacity)


def pool(
    cfg: StudyConfig, workload_name: str, strategy: str, rate: float, runs: list[RunData]
) -> Result:
    """One result from a strategy's repeats: samples pooled, counters summed."""
    samples = [sample for run in runs for sample in run.samples]
    counters = EngineCounters()
    for run in runs:
        counters = counters + run.counters
    result: Result = {
        "workload": workload_name,
        "strategy": strategy,
        "offered_req_s": rate,
        "repeats": len(runs),
    }
    result |= summarize(samples, start=cfg.warmup_s, end=cfg.duration_s, runs=len(runs))
    result["ttft_p95_by_repeat_s"] = [
        summarize(run.samples, start=cfg.warmup_s, end=cfg.duration_s)["ttft_p95_s"] for run in runs
    ]
    result["capacity_req_s"] = next((r.capacity for r in runs if r.capacity is not None), None)
    result["prefix_cache_hit_rate"] = counters.hit_rate
    for key in ("cpu_study", "cpu_others"):
        values = [run.cpu[key] for run in runs if key in run.cpu]
        if values:
            result[key] = round(statistics.mean(values), 3)
    return result


async def run_workload(
    cfg: StudyConfig, workload_name: str, rate: float, log_dir: Path
) -> list[Result]:
    """Every strategy on one workload, repeats interleaved (odd repeats in reverse order)."""
    data: dict[str, list[RunData]] = {strategy: [] for strategy in cfg.strategies}
    failed: dict[str, str] = {}
    for repeat in range(cfg.repeats):
        order = cfg.strategies if repeat % 2 == 0 else tuple(reversed(cfg.strategies))
        for strategy in order:
            if strategy in failed:
                continue
            run_dir = log_dir / f"{workload_name}-{strategy}-{repeat}"
            try:
                run = await measure_run(cfg, workload_name, strategy, rate, run_dir, repeat)
            except StrategyUnavailable as exc:
                log.warning("%s: not available in this router (%s)", strategy, exc)
                failed[strategy] = "unavailable"
                continue
            except StartFailed as exc:
                log.error("%s/%s did not start: %s", workload_name, strategy, exc)
                failed[strategy] = "start failed"
                continue
            data[strategy].append(run)
            one = pool(cfg, workload_name, strategy, rate, [run])
            log.info(
                "%s %s #%d: TTFT p50 %s p95 %s, hit rate %s, CPU study %s others %s",
                workload_name, strategy, repeat, one["ttft_p50_s"], one["ttft_p95_s"],
                one["prefix_cache_hit_rate"], one.get("cpu_study"), one.get("cpu_others"),
            )  # fmt: skip
    return [
        {"workload": workload_name, "strategy": strategy, "error": failed[strategy]}
        if strategy in failed
        else pool(cfg, workload_name, strategy, rate, data[strategy])
        for strategy in cfg.strategies
    ]


async def run_study(cfg: StudyConfig, log_dir: Path) -> Result:
    results: Result = {"config": asdict(cfg), "machine": machine(), "capacity": {}, "runs": []}
    for workload_name in cfg.workloads:
        capacity = await measure_capacity(cfg, workload_name, log_dir / f"capacity-{workload_name}")
        results["capacity"][workload_name] = capacity
        log.info("capacity of %s: %.1f req/s", workload_name, capacity["req_s"])
        if "low_load_check" not in results:
            rate = cfg.low_load * capacity["req_s"]
            check = await low_load_check(cfg, rate, log_dir / "low-load")
            results["low_load_check"] = check
            log.info("low-load check: %s", check)
        rate = cfg.load * capacity["req_s"]
        results["runs"] += await run_workload(cfg, workload_name, rate, log_dir)
    results["targets"] = targets(results["runs"])
    return results
