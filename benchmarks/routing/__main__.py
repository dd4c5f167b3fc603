"""``python -m benchmarks.routing``: the routing-quality study (see docs/routing.md)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
import tempfile
import time
from pathlib import Path

import orjson

from .config import STRATEGIES, WORKLOADS, StudyConfig
from .report import markdown_table, plot, targets_table
from .stack import parse_strategy
from .study import estimate_s, run_study


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.routing", description=__doc__)
    parser.add_argument("--out", default="docs/routing", help="where results and plots go")
    parser.add_argument("--logs", default=None, help="process logs (default: a temporary dir)")
    parser.add_argument("--smoke", action="store_true", help="2 engines, 1 workload, seconds")
    parser.add_argument("--engines", type=int, default=None, help="simulated engines (4)")
    parser.add_argument(
        "--strategies",
        default=None,
        help=f"comma list of {','.join(STRATEGIES)}; a strategy may carry router flags: "
        "prefix_affinity+hash-balance-factor=0.1",
    )
    parser.add_argument("--workloads", default=None, help=f"comma list of {','.join(WORKLOADS)}")
    parser.add_argument("--duration", type=float, default=None, help="seconds per run (12)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="runs per pair, interleaved and pooled (3)"
    )
    parser.add_argument(
        "--routers",
        default=None,
        help="comma list of router counts, each a pass of the study with that many router "
        "replicas in front of the same engines, each request to one drawn at random (1)",
    )
    parser.add_argument(
        "--strategies-2r",
        default=None,
        help="the strategies run with more than one router "
        "(round_robin,prefix_affinity,scored; those of --strategies among them)",
    )
    parser.add_argument(
        "--candidate",
        default=None,
        help="comma list of the strategies checked against the issue's targets (scored)",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return parser.parse_args(argv)


class UsageError(ValueError):
    """A bad command line: one line on stderr, exit 2."""


def parse_counts(text: str) -> tuple[int, ...]:
    """``1,2`` -> (1, 2): router counts, each at least 1."""
    try:
        counts = tuple(sorted({int(part) for part in text.split(",")}))
    except ValueError:
        raise UsageError(f"--routers: not a comma list of numbers: {text!r}") from None
    if counts[0] < 1:
        raise UsageError(f"--routers: counts must be at least 1: {text!r}")
    return counts


def build_config(args: argparse.Namespace) -> StudyConfig:
    cfg = StudyConfig()
    if args.smoke:
        cfg = cfg.smoke()
    changes: dict[str, object] = {}
    named: list[str] = []  # strategies the user named (the defaults may name a missing one)
    if args.engines:
        changes["engines"] = args.engines
    if args.strategies:
        changes["strategies"] = tuple(args.strategies.split(","))
        named += args.strategies.split(",")
    if args.workloads:
        changes["workloads"] = tuple(args.workloads.split(","))
    if args.duration:
        changes["duration_s"] = args.duration
    if args.repeats:
        changes["repeats"] = args.repeats
    if args.no_plots:
        changes["plots"] = False
    if args.routers:
        changes["routers"] = parse_counts(args.routers)
    if args.strategies_2r:
        changes["strategies_multi"] = tuple(args.strategies_2r.split(","))
        named += args.strategies_2r.split(",")
    if args.candidate:
        changes["candidates"] = tuple(args.candidate.split(","))
        named += args.candidate.split(",")
    cfg = dataclasses.replace(cfg, **changes)  # type: ignore[arg-type]
    names = {parse_strategy(label)[0] for label in named}
    unknown = names - set(STRATEGIES) | set(cfg.workloads) - set(WORKLOADS)
    if unknown:
        raise UsageError(f"unknown strategy or workload: {', '.join(sorted(unknown))}")
    return cfg


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        cfg = build_config(args)
    except UsageError as exc:
        print(f"python -m benchmarks.routing: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    estimate = estimate_s(cfg)
    print(
        f"routing study: {len(cfg.workloads)} workloads, routers {cfg.routers}, "
        f"{cfg.repeats} rounds; about {estimate / 60:.0f} minutes ({estimate:.0f} s)",
        flush=True,
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="routing-study-") as tmp:
        log_dir = Path(args.logs or tmp)
        results = asyncio.run(run_study(cfg, log_dir))
    results["command"] = "python -m benchmarks.routing " + " ".join(argv)
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    (out / "results.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    table = markdown_table(results["runs"])
    goals = targets_table(results["targets"])
    (out / "results.md").write_text(f"{table}\n{goals}")
    if cfg.plots:
        plot(results["runs"], out)
    print(table)
    print(goals)
    print(f"low-load check: {results.get('low_load_check')}")
    print(f"written to {out}/ in {results['elapsed_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
