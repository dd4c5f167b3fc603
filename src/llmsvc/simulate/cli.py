"""``llmsvc simulate``: parse the flags, run each policy over the trace, report.

Exit status: 0 after a report, 2 for bad flags, an unknown trace or policy, a bad CSV
or profile (one line on stderr), 130 when interrupted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import orjson
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from llmsvc.autoscale.policy import Policy
from llmsvc.core.settings import die, parse_settings
from llmsvc.simulate import plots
from llmsvc.simulate.api import SimConfig, SimResult, simulate
from llmsvc.simulate.report import document, print_report
from llmsvc.simulate.settings import SimulateSettings
from llmsvc.simulate.timing import engine_timing
from llmsvc.simulate.traces import Trace, TraceError, load_trace

PROG = "llmsvc simulate"
DESCRIPTION = (
    "Simulate a router, an autoscaler and N simulated engines in simulated time over a "
    "trace, and report per policy TTFT p50/p95/p99, requests held and rejected, cold starts, "
    "wakes and GPU-seconds. --json prints one JSON object."
)


def autoscale_policy(settings: SimulateSettings) -> Policy:
    """``Policy``'s own defaults, with the flags given on top."""
    base = Policy(min_replicas=1, max_replicas=settings.max_replicas or settings.workers)
    return dataclasses.replace(
        base,
        target_requests=settings.target_requests or base.target_requests,
        target_kv_cache=settings.target_kv_cache or base.target_kv_cache,
        scale_up_delay=_given(settings.scale_up_delay, base.scale_up_delay),
        scale_down_delay=_given(settings.scale_down_delay, base.scale_down_delay),
        metric=settings.metric or base.metric,
    )


def _given(value: float | None, default: float) -> float:
    return default if value is None else value


def build(settings: SimulateSettings) -> tuple[Trace, SimConfig]:
    """The trace and the first policy's config; ``ValueError`` for bad input."""
    trace = load_trace(
        settings.trace,
        duration=settings.duration,
        rate=settings.rate,
        seed=settings.seed,
        prompt_tokens=settings.prompt_tokens,
        output_tokens=settings.output_tokens,
    )
    timing = engine_timing(
        settings.profile, startup_delay=settings.startup_delay, wake_delay=settings.wake_delay
    )
    config = SimConfig(
        trace=trace,
        policy=settings.policy[0],  # type: ignore[arg-type]  # checked by the settings
        workers=settings.workers,
        seed=settings.seed,
        timing=timing,
        autoscale=autoscale_policy(settings),
        autoscale_interval=settings.autoscale_interval,
        idle_timeout=settings.idle_timeout,
        idle_check_interval=settings.idle_check_interval,
        wake_target=settings.wake_target,
        standby=settings.standby,
        hold_timeout=settings.hold_timeout,
        strategy=settings.strategy,
        backend_concurrency=settings.backend_concurrency,
        queue_size=settings.queue_size,
        queue_timeout=settings.queue_timeout,
    )
    return trace, config


@contextlib.contextmanager
def _progress(
    show: bool, policies: Sequence[str]
) -> Iterator[Callable[[str], Callable[[float], None]]]:
    """A factory of per-policy progress callbacks (no-ops without a terminal)."""
    if not show:
        yield lambda policy: lambda fraction: None
        return
    bar = Progress(
        TextColumn("{task.description:<15}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    with bar:
        tasks = {policy: bar.add_task(policy, total=1.0) for policy in policies}

        def callback(policy: str) -> Callable[[float], None]:
            task = tasks[policy]
            return lambda fraction: bar.update(task, completed=fraction)

        yield callback


def main(argv: Sequence[str]) -> int:
    argv = ["--output=json" if arg == "--json" else arg for arg in argv]
    settings = parse_settings(SimulateSettings, argv, prog=PROG, description=DESCRIPTION)
    if settings.plots is not None and (why := plots.missing()):
        die(PROG, why)
    try:
        trace, config = build(settings)
    except (TraceError, ValueError) as exc:
        die(PROG, str(exc).splitlines()[0])
    show = settings.progress and sys.stderr.isatty()
    results: list[SimResult] = []  # kept for the plots only: a day's run is ~200 MB
    summaries: list[dict[str, Any]] = []
    with _progress(show, settings.policy) as progress_for:
        for policy in settings.policy:
            run = dataclasses.replace(config, policy=policy)  # type: ignore[arg-type]
            result = simulate(run, progress_for(policy))
            summaries.append(result.summary())
            if settings.plots is not None:
                results.append(result)
            del result
    data = document(trace, config, summaries)
    if settings.plots is not None:
        data["plots"] = [str(path) for path in plots.write_plots(settings.plots, results)]
    if settings.output == "json":
        sys.stdout.write(orjson.dumps(data).decode() + "\n")
    else:
        print_report(Console(width=None if sys.stdout.isatty() else 132), data)
        for path in data.get("plots", []):
            print(f"wrote {path}")
    return 0
