"""``make simulate-speed``: how long a day of traffic takes to simulate, per policy.

``python -m llmsvc.simulate.speed [--duration S] [--rate R] [--out FILE]`` times the
trace's generation and each policy's :func:`~llmsvc.simulate.api.simulate` (one
process, one core) and writes a markdown table with the machine and the commit. A
benchmark: it reports, it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from llmsvc.simulate.api import POLICIES, SimConfig, simulate
from llmsvc.simulate.timing import engine_timing
from llmsvc.simulate.traces import load_trace


def _commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError:
        return "unknown"
    return done.stdout.strip() or "unknown"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _row(name: str, requests: int, started: float, cpu: float) -> str:
    """A table row: wall seconds (what a user waits), CPU seconds (less at the mercy of
    other work on the machine) and CPU microseconds per request."""
    wall, used = time.perf_counter() - started, time.process_time() - cpu
    return f"| {name} | {requests:,} | {wall:.1f} | {used:.1f} | {used / requests * 1e6:.1f} |"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmsvc.simulate.speed")
    parser.add_argument("--trace", default="diurnal")
    parser.add_argument("--duration", type=float, default=86400.0)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=5)
    parser.add_argument("--profile", default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the table here too")
    args = parser.parse_args(argv)
    load_start, commit = os.getloadavg()[0], _commit()
    started, cpu = time.perf_counter(), time.process_time()
    trace = load_trace(args.trace, duration=args.duration, rate=args.rate, seed=0)
    rows = [_row("(trace generation)", len(trace), started, cpu)]
    timing = engine_timing(args.profile)
    for policy in POLICIES:
        config = SimConfig(trace=trace, policy=policy, workers=args.workers, timing=timing)
        started, cpu = time.perf_counter(), time.process_time()
        result = simulate(config)
        rows.append(_row(policy, len(result.requests), started, cpu))
        print(rows[-1], file=sys.stderr, flush=True)
    command = (
        f"python -m llmsvc.simulate.speed --trace {args.trace} --duration {args.duration:g} "
        f"--rate {args.rate:g} --workers {args.workers}"
        + (f" --profile {args.profile}" if args.profile else "")
    )
    lines = [
        f"Simulating `{args.trace}` for {args.duration:g} s at {args.rate:g} requests/s, "
        f"{args.workers} workers, profile {args.profile or 'default'} (one process each).",
        "",
        "| policy | requests | wall s | CPU s | CPU µs per request |",
        "| --- | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        f"Machine: {os.cpu_count()} CPUs ({_cpu()}), Python {platform.python_version()}, "
        f"1-minute load average {load_start:.1f} at the start and {os.getloadavg()[0]:.1f} at "
        f"the end; llmsvc commit {commit}, {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}. "
        f"Command: `{command}` (`make simulate-speed`).",
    ]
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
