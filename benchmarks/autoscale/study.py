"""The autoscaling study (``make autoscale-study``): what each policy costs and gives.

    .venv/bin/python -m benchmarks.autoscale.study --doc docs/autoscaling.md   # about a minute
    .venv/bin/python -m benchmarks.autoscale.study --tiny --out DIR            # the test's run

For every built-in trace of ``llmsvc simulate`` (steady, bursty, diurnal,
spike-from-zero) and one stated fleet (``Settings``), three policies in
simulated time: ``fixed`` (``--workers`` engines always on), ``autoscale``
(the operator's Scaler, min 1) and ``autoscale-zero`` (min 0, requests held
through cold starts). Reported per trace and policy: GPU-seconds (engine-seconds
up: the cost), TTFT p50/p95/p99, requests held and rejected, cold starts.
Deterministic (``--seed``): the same arguments give the same table on any
machine, so it may run at any time. Results go to ``--out`` (``study.json``,
``study.md``, ``study-<trace>.png``); with ``--doc`` the table goes between
``<!-- autoscale-study -->`` markers.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the root: benchmarks.*

from benchmarks.autoscale.report import replace_between, study_markdown
from benchmarks.autoscale.sim import PolicyRun, run_policy

from llmsvc.simulate import PolicyName

ROOT = Path(__file__).resolve().parents[2]
TRACES = ("steady", "bursty", "diurnal", "spike-from-zero")
POLICIES: tuple[PolicyName, ...] = ("fixed", "autoscale", "autoscale-zero")
MARK = "autoscale-study"
STYLES: dict[str, dict[str, Any]] = {
    "fixed": {"linewidth": 3.0, "alpha": 0.5},
    "autoscale": {"linewidth": 1.8, "linestyle": "--"},
    "autoscale-zero": {"linewidth": 1.2},
}


@dataclass(frozen=True, slots=True)
class Settings:
    """The one fleet and workload every trace and policy of the study runs with."""

    workers: int = 4
    """Engines of the fixed fleet, and the autoscaler's maximum."""
    duration: float = 3600.0
    rate: float = 6.0
    """Mean requests/s of every trace (the shapes differ around it)."""
    prompt_tokens: int = 64
    output_tokens: int = 32
    target_requests: float = 8.0
    scale_up_delay: float = 0.0
    scale_down_delay: float = 120.0
    startup_delay: float = 30.0
    """Seconds a cold start takes (an engine from nothing to ready)."""
    hold_timeout: float = 30.0
    """Seconds the router holds a request for a ready engine (``--hold-timeout``'s default)."""
    autoscale_interval: float = 2.0
    """Seconds between the autoscaler's decisions (``--autoscale-interval``'s default)."""
    profile: str | None = None
    """A sim-engine profile for the engines' timing (None: the sim-engine's defaults)."""
    seed: int = 14


TINY = Settings(duration=120.0, rate=2.0, startup_delay=5.0, scale_down_delay=10.0)


def commit() -> str:
    run = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return run.stdout.strip() or "unknown"


def run(settings: Settings, command: str) -> tuple[dict[str, Any], dict[str, list[PolicyRun]]]:
    """Every trace under every policy: the results document and the runs (for the plots)."""
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    rows: dict[str, dict[str, Any]] = {}
    runs: dict[str, list[PolicyRun]] = {}
    began = time.monotonic()
    for trace in TRACES:
        runs[trace] = []
        rows[trace] = {}
        for policy in POLICIES:
            result = run_policy(trace, policy, settings)
            runs[trace].append(result)
            rows[trace][policy] = result.summary
            print(
                f"{trace:>16} {policy:>14}: "
                + ", ".join(f"{k}={v}" for k, v in result.summary.items()),
                flush=True,
            )
    return {
        "date": started,
        "commit": commit(),
        "command": command,
        "settings": dataclasses.asdict(settings),
        "simulated_in_s": round(time.monotonic() - began, 1),
        "rows": rows,
    }, runs


def plots(runs: dict[str, list[PolicyRun]], out: Path, settings: Settings) -> list[Path]:
    """``study-<trace>.png`` per trace: each policy's replicas over time with the demand
    behind them (right axis) above, each request's TTFT by its arrival below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"fixed": "#4c72b0", "autoscale": "#dd8452", "autoscale-zero": "#55a868"}
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for trace, results in runs.items():
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True)
        demand = results[0].timeline
        right = top.twinx()
        right.fill_between(
            [p[0] for p in demand], [p[2] for p in demand], step="post", color="#bbbbbb",
            alpha=0.5, linewidth=0, label="demand, fixed fleet (in flight + waiting)",
        )  # fmt: skip
        right.set_ylabel("demand (requests)")
        right.legend(fontsize=8, loc="upper right")
        top.set_zorder(right.get_zorder() + 1)
        top.patch.set_visible(False)
        for result in results:
            points = result.timeline
            top.step(
                [p[0] for p in points], [p[1] for p in points], where="post",
                color=colors[result.policy], label=f"{result.policy} replicas",
                **STYLES[result.policy],
            )  # fmt: skip
        for result in reversed(results):  # the fixed fleet's points last, over the rest
            bottom.scatter(
                [r[0] for r in result.ttfts], [r[1] for r in result.ttfts], s=3,
                color=colors[result.policy], label=result.policy, alpha=0.6,
            )  # fmt: skip
        top.set_ylabel("replicas (engines up)")
        top.set_title(
            f"{trace}: mean {settings.rate:g} requests/s over {settings.duration:g} s, "
            f"fleet of {settings.workers}, cold start {settings.startup_delay:g} s",
            fontsize=10,
        )
        top.legend(fontsize=8, loc="upper left")
        bottom.set_yscale("log")
        bottom.set_ylabel("TTFT (s)")
        bottom.set_xlabel("simulated time (s)")
        bottom.legend(fontsize=8, loc="upper left", markerscale=3)
        fig.tight_layout()
        path = out / f"study-{trace}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks.autoscale.study", description=__doc__.splitlines()[0]
    )
    defaults = Settings()
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "autoscaling")
    parser.add_argument("--doc", type=Path, help="markdown file whose study table to replace")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="a two-minute trace (tests)")
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--duration", type=float, default=defaults.duration)
    parser.add_argument("--rate", type=float, default=defaults.rate)
    parser.add_argument("--startup-delay", type=float, default=defaults.startup_delay)
    parser.add_argument("--scale-down-delay", type=float, default=defaults.scale_down_delay)
    parser.add_argument("--profile", default=defaults.profile)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    for name in ("duration", "rate"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be > 0")
    for name in ("startup_delay", "scale_down_delay"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = (
        dataclasses.replace(TINY, seed=args.seed)
        if args.tiny
        else Settings(
            workers=args.workers,
            duration=args.duration,
            rate=args.rate,
            startup_delay=args.startup_delay,
            scale_down_delay=args.scale_down_delay,
            profile=args.profile,
            seed=args.seed,
        )
    )
    words = sys.argv[1:] if argv is None else argv
    command = " ".join(["python -m benchmarks.autoscale.study", *words])
    doc, runs = run(settings, command)
    name = "study-tiny" if args.tiny else "study"
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.no_plots:
        doc["plots"] = [p.name for p in plots(runs, args.out, settings)]
    (args.out / f"{name}.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    table = study_markdown(doc)
    (args.out / f"{name}.md").write_text(table)
    if args.doc is not None:
        replace_between(args.doc, table, MARK)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
