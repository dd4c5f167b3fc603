"""The batch benchmark (``make batch-bench``): is interactive traffic protected, and how well
does the ETA predict?

    .venv/bin/python -m benchmarks.batch --doc docs/batch.md      # about 8 minutes
    .venv/bin/python -m benchmarks.batch --quick --out DIR         # the smoke run (tests)

Simulated engines with fixed timing (a known capacity), a router with slots and
``--batch-url``, ``llmsvc batch`` behind it (``stack.py``); interactive traffic at
``--interactive-load`` x the measured capacity alone, then with a ``--lines`` batch
submitted with the ``openai`` client (``study.py``). Results go to ``--out``
(``results.json``, ``protect.md``, ``eta.md``), and with ``--doc`` the two tables
into the document between their markers (``report.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the root: benchmarks.*

from benchmarks.batch.report import ETA_END, ETA_START, PROTECT_END, PROTECT_START, markdown
from benchmarks.batch.study import QUICK, Settings, run_study
from benchmarks.chaos.table import replace_table
from benchmarks.common.processes import StartFailed
from benchmarks.common.procfs import machine
from benchmarks.flow.__main__ import llmsvc_commit

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks.batch", description=__doc__.splitlines()[0])
    d = Settings()
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--work", type=Path, default=ROOT / ".bench" / "batch")
    parser.add_argument("--doc", type=Path, help="markdown file whose batch tables to replace")
    parser.add_argument("--quick", action="store_true", help="a seconds-long run (tests)")
    parser.add_argument("--lines", type=int, default=d.lines, help="lines in the batch")
    parser.add_argument("--engines", type=int, default=d.engines)
    parser.add_argument("--slots", type=int, default=d.timing.slots, help="per engine")
    parser.add_argument("--interactive-load", type=float, default=d.interactive_load,
                        help="the interactive rate, x the measured capacity")  # fmt: skip
    parser.add_argument("--alone-seconds", type=float, default=d.alone_seconds)
    parser.add_argument("--batch-timeout", type=float, default=d.batch_timeout,
                        help="seconds (b) waits for the batch before cancelling it")  # fmt: skip
    parser.add_argument("--seed", type=int, default=d.seed)
    args = parser.parse_args(argv)
    if args.lines < 1 or args.engines < 1 or args.slots < 1:
        parser.error("--lines, --engines and --slots must be >= 1")
    if not 0 < args.interactive_load < 1:
        parser.error("--interactive-load must be between 0 and 1")
    if args.alone_seconds <= 0 or args.batch_timeout <= 0:
        parser.error("--alone-seconds and --batch-timeout must be > 0")
    return args


def settings_of(args: argparse.Namespace) -> Settings:
    if args.quick:
        return QUICK
    d = Settings()
    return dataclasses.replace(
        d, lines=args.lines, engines=args.engines,
        timing=dataclasses.replace(d.timing, slots=args.slots),
        interactive_load=args.interactive_load, alone_seconds=args.alone_seconds,
        batch_timeout=args.batch_timeout, seed=args.seed,
    )  # fmt: skip


def command_line(argv: list[str]) -> str:
    return " ".join(["python -m benchmarks.batch", *argv])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    settings = settings_of(args)
    load_start = os.getloadavg()[0]
    try:
        doc = run_study(settings, args.work.resolve())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("benchmarks.batch: interrupted; its processes are stopped", file=sys.stderr)
        return 130
    except (StartFailed, RuntimeError) as exc:
        print(f"benchmarks.batch: {exc}", file=sys.stderr)
        return 1
    doc |= {
        "command": command_line(argv),
        "llmsvc_commit": llmsvc_commit(),
        "machine": machine(),
        "load_average_1m": {"start": load_start, "end": os.getloadavg()[0]},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "results-quick" if args.quick else "results"
    (args.out / f"{stem}.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    protect, eta = markdown(doc)
    (args.out / f"{stem}-protect.md").write_text(protect)
    (args.out / f"{stem}-eta.md").write_text(eta)
    print(protect + "\n" + eta)
    if args.doc:
        replace_table(args.doc, protect, PROTECT_START, PROTECT_END)
        replace_table(args.doc, eta, ETA_START, ETA_END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
