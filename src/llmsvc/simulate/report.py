"""The report of a simulation: one JSON document, or a table for people."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from llmsvc.simulate.api import SimConfig
from llmsvc.simulate.traces import Trace


def document(
    trace: Trace, config: SimConfig, summaries: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Everything the run was and found; the same arguments give the same document."""
    scaling = dataclasses.replace(config, policy="autoscale").scaling()
    return {
        "trace": {
            "name": trace.name,
            "duration_s": trace.duration,
            "requests": len(trace),
            "mean_rate_rps": round(len(trace) / trace.duration, 4),
        },
        "workers": config.workers,
        "seed": config.seed,
        "engine": dataclasses.asdict(config.timing),
        "autoscale": None if scaling is None else dataclasses.asdict(scaling),
        "autoscale_interval_s": config.autoscale_interval,
        "standby": {
            "mode": config.standby,
            "idle_timeout_s": config.idle_timeout,
            "idle_check_interval_s": config.idle_check_interval,
            "wake_target": config.wake_target,
        },
        "hold_timeout_s": config.hold_timeout,
        "strategy": config.strategy,
        "router_queue": {
            "backend_concurrency": config.backend_concurrency,
            "queue_size": config.queue_size,
            "queue_timeout_s": config.queue_timeout,
        },
        "policies": list(summaries),
    }


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_report(console: Console, data: dict[str, Any]) -> None:
    trace = data["trace"]
    console.print(
        f"trace {trace['name']}: {trace['requests']} requests over {trace['duration_s']:g} s "
        f"({trace['mean_rate_rps']:.2f}/s), {data['workers']} workers, seed {data['seed']}"
    )
    table = Table(show_edge=False)
    table.add_column("policy", no_wrap=True)
    for column in ("answered", "held", "queued", "rejected", "TTFT p50", "p95", "p99"):
        table.add_column(column, justify="right")
    for column in ("cold starts", "wakes", "GPU-s", "max on"):
        table.add_column(column, justify="right")
    for row in data["policies"]:
        ttft = row["ttft_s"]
        table.add_row(
            row["policy"],
            str(row["answered"]),
            str(row["held"]),
            str(row["queued"]),
            str(row["rejected"]),
            _seconds(ttft["p50"]),
            _seconds(ttft["p95"]),
            _seconds(ttft["p99"]),
            str(row["cold_starts"]),
            str(row["wakes"]),
            f"{row['gpu_seconds']:.0f}",
            str(row["max_replicas"]),
        )
    console.print(table)
    console.print(
        "TTFT in seconds from arrival at the router; GPU-s: engine-seconds starting, ready, "
        "waking or draining"
    )
