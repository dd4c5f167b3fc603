"""Cold-start benchmark (``make coldstart-bench``): what a request waits for a standby engine.

    .venv/bin/python -m benchmarks.coldstart                      # 5 cycles per mode, ~1.5 min
    .venv/bin/python -m benchmarks.coldstart --cycles 1 --out DIR --doc ''   # the smoke run

For each ``--standby`` mode (``sleep``, ``stop``) a registry, a router and one babysitter
of a simulated engine (``bench.py``); ``--cycles`` times: standby, one streamed request
through the router, the engine's wake as its babysitter measured it, the request again
warm. Writes ``results.json`` to ``--out``, the report to ``--report``
(docs/autoscaling/coldstart.md) and the table between ``<!-- coldstart-table -->``
markers of ``--doc`` (docs/autoscaling.md). No pass/fail: the report says whether the
hold overhead met its 0.5 s target.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the root: benchmarks.*

from benchmarks.chaos.table import replace_table
from benchmarks.coldstart.bench import Settings, run_mode
from benchmarks.coldstart.report import TABLE_END, TABLE_START, markdown, summary, table
from benchmarks.common.processes import StartFailed
from benchmarks.common.procfs import machine

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
MODES = ("sleep", "stop")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = Settings()
    parser = argparse.ArgumentParser(
        prog="benchmarks.coldstart", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--cycles", type=int, default=defaults.cycles)
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: sleep,stop")
    parser.add_argument("--idle-timeout", type=float, default=defaults.idle_timeout)
    parser.add_argument("--wake-delay", type=float, default=defaults.wake_delay)
    parser.add_argument("--startup-delay", type=float, default=defaults.startup_delay)
    parser.add_argument(
        "--babysitter-args", default="", help="more babysitter flags, one shell-quoted string"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--work", type=Path, default=ROOT / ".bench" / "coldstart")
    parser.add_argument(
        "--report", type=Path, default=ROOT / "docs" / "autoscaling" / "coldstart.md"
    )
    parser.add_argument(
        "--doc",
        default=str(ROOT / "docs" / "autoscaling.md"),
        help="markdown file whose coldstart table to replace ('' for none)",
    )
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes: use some of {','.join(MODES)}")
    args.modes = modes
    if args.cycles < 1:
        parser.error("--cycles must be >= 1")
    for name in ("idle_timeout", "wake_delay", "startup_delay"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0")
    return args


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings(
        cycles=args.cycles,
        idle_timeout=args.idle_timeout,
        wake_delay=args.wake_delay,
        startup_delay=args.startup_delay,
        babysitter_args=tuple(shlex.split(args.babysitter_args)),
    )
    started = time.monotonic()
    load = os.getloadavg()
    modes: dict[str, Any] = {}
    for mode in args.modes:
        print(f"coldstart: --standby {mode}, {settings.cycles} cycles", file=sys.stderr)
        cycles = [c.as_dict() for c in await run_mode(mode, settings, args.work)]
        modes[mode] = {"cycles": cycles, "summary": summary(cycles)}
    return {
        "machine": machine(),
        "commit": commit(),
        "command": "make coldstart-bench"
        + (f" COLDSTART_ARGS='{shlex.join(sys.argv[1:])}'" if sys.argv[1:] else ""),
        "load_average": " ".join(f"{x:.2f}" for x in load),
        "settings": {
            "cycles": settings.cycles,
            "idle_timeout": settings.idle_timeout,
            "wake_delay": settings.wake_delay,
            "startup_delay": settings.startup_delay,
            "babysitter_args": list(settings.babysitter_args),
        },
        "seconds": time.monotonic() - started,
        "modes": modes,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for mode in args.modes:
        (args.work / mode).mkdir(parents=True, exist_ok=True)
    try:
        results = asyncio.run(run(args))
    except StartFailed as exc:
        print(f"coldstart: {exc}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(markdown(results))
    if args.doc:
        replace_table(Path(args.doc), table(results), TABLE_START, TABLE_END)
    print(table(results), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
