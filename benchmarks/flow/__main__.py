"""Overload benchmark (``make flow-bench``): flow control on and off, a fairness figure, the cost.

    .venv/bin/python -m benchmarks.flow --doc docs/flow-control.md    # about 5 minutes
    .venv/bin/python -m benchmarks.flow --quick --out DIR --no-plots   # the smoke run (tests)
    .venv/bin/python -m benchmarks.flow --cost --doc docs/flow-control.md  # the CPU cost only

A fleet of simulated engines with a fixed number of slots and fixed timing
(``fleet.py``) behind a fresh router per phase (``study.py``): the capacity
measured, an idle baseline, ``--overload`` x capacity with the issue's class mix
with the router's slots and queue and without, and two tenants at 20:1 into a
saturated fleet. Results go to ``--out`` (``results.json``, ``results.md``),
plots to ``--plots``, and with ``--doc`` the tables into the document between
``<!-- flow-overload-table -->`` markers.

``--cost`` runs ``benchmarks/harness`` instead, for the router alone at
this commit (no slots; slots never full; requests queued) and at ``--base``
(the commit before flow control), and puts the CPU per request and the ratio
between ``<!-- flow-cost-table -->`` markers of ``--doc`` and
``<!-- flow-cost-line -->`` of ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the root: benchmarks.*

from benchmarks.chaos.table import replace_table
from benchmarks.common.procfs import machine
from benchmarks.flow.report import (
    COST_END,
    COST_LINE_END,
    COST_LINE_START,
    COST_START,
    OVERLOAD_END,
    OVERLOAD_START,
    cost_line,
    cost_markdown,
    markdown,
    plots,
)
from benchmarks.flow.study import QUICK, Settings, run_study

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
DEFAULT_BASE = "23d7c55"  # the commit before issue 13's flow control
COST_TARGETS = "llmsvc-1w,llmsvc-base,llmsvc-slots,llmsvc-queued"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks.flow", description=__doc__.splitlines()[0])
    defaults = Settings()
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--plots", type=Path, default=ROOT / "docs" / "flow-control")
    parser.add_argument("--work", type=Path, default=ROOT / ".bench" / "flow")
    parser.add_argument("--doc", type=Path, help="markdown file whose flow tables to replace")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--quick", action="store_true", help="seconds-long phases (tests)")
    parser.add_argument("--seconds", type=float, default=defaults.seconds, help="overload phase")
    parser.add_argument("--overload", type=float, default=defaults.overload, help="x capacity")
    parser.add_argument("--engines", type=int, default=defaults.engines)
    parser.add_argument("--queue-size", type=int, default=defaults.queue_size)
    parser.add_argument("--queue-timeout", type=float, default=defaults.queue_timeout)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--cost", action="store_true", help="the CPU cost comparison only")
    parser.add_argument("--base", default=DEFAULT_BASE, help="--cost: the commit to compare to")
    parser.add_argument("--cost-args", default="", help="--cost: more benchmarks/harness flags")
    args = parser.parse_args(argv)
    for name in ("seconds", "overload", "queue_timeout"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0")
    if args.engines < 1 or args.queue_size < 0:
        parser.error("--engines must be >= 1 and --queue-size >= 0")
    return args


def settings_of(args: argparse.Namespace) -> Settings:
    if args.quick:
        return QUICK
    return dataclasses.replace(
        Settings(), seconds=args.seconds, overload=args.overload, engines=args.engines,
        queue_size=args.queue_size, queue_timeout=args.queue_timeout, seed=args.seed,
    )  # fmt: skip


def command_line(argv: list[str]) -> str:
    """How this run was started (with ``PYTHONPATH`` when it points the run at another
    llmsvc source, such as a worktree of one commit)."""
    path = os.environ.get("PYTHONPATH")
    prefix = [f"PYTHONPATH={path}"] if path else []
    return " ".join([*prefix, "python -m benchmarks.flow", *argv])


def llmsvc_commit() -> str:
    """The commit of the llmsvc this run imports (and its engines and routers run: the same
    ``PYTHONPATH``), ``+ uncommitted changes`` when its source differs from it."""
    import llmsvc

    where = str(Path(llmsvc.__file__).resolve().parent)
    try:
        sha = subprocess.run(
            ["git", "-C", where, "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", where, "status", "--porcelain", "--", "."],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + (" + uncommitted changes" if dirty else "")


def run_cost(args: argparse.Namespace, argv: list[str]) -> int:
    """``benchmarks/harness`` with the cost targets; its results, then the doc's cost parts."""
    out = args.out / "cost"
    command = [
        sys.executable, str(ROOT / "benchmarks" / "harness"), "--targets", COST_TARGETS,
        "--sweep", "", "--streams", "10", "--no-plots", "--out", str(out), "--base", args.base,
        "--work", str(args.work / "cost"), *args.cost_args.split(),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT)
    if done.returncode != 0 or not (out / "results.json").is_file():
        print(f"benchmarks.flow: the harness failed (exit {done.returncode})", file=sys.stderr)
        return 1
    cost: dict[str, Any] = orjson.loads((out / "results.json").read_bytes())
    cost["base"] = args.base
    cost["llmsvc_commit"] = llmsvc_commit()
    cost["command"] = command_line(argv) + " -> " + cost["command"]
    table = cost_markdown(cost)
    (out / "cost.md").write_text(table)
    print(table)
    if args.doc:
        replace_table(args.doc, table, COST_START, COST_END)
        line = cost_line(cost)
        performance = args.doc.parent / "performance.md"
        if line and performance.is_file():
            replace_table(performance, line, COST_LINE_START, COST_LINE_END)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.cost:
        return run_cost(args, argv)
    settings = settings_of(args)
    load_start = os.getloadavg()[0]
    try:
        doc = run_study(settings, args.work.resolve())
    except KeyboardInterrupt:
        print("benchmarks.flow: interrupted; its processes are stopped", file=sys.stderr)
        return 130
    doc |= {
        "command": command_line(argv),
        "llmsvc_commit": llmsvc_commit(),
        "machine": machine(),
        "load_average_1m": {"start": load_start, "end": os.getloadavg()[0]},
        "service_s": round(settings.timing.service_s, 4),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "results-quick" if args.quick else "results"
    (args.out / f"{stem}.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    text = markdown(doc)
    (args.out / f"{stem}.md").write_text(text)
    print(text)
    if not args.no_plots:
        try:
            plots(doc, args.plots)
        except ImportError:
            print("benchmarks.flow: no matplotlib, no plots (pip install -e '.[bench]')")
    if args.doc:
        replace_table(args.doc, text, OVERLOAD_START, OVERLOAD_END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
