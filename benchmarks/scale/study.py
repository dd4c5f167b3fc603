"""The scale study: a router over 1,000 backends, a registry of 10,000 records and 50 watchers.

Measures, on this machine:

1. decision time: what the router spends per request choosing a backend
   (``BackendPool.eligible`` + ``Strategy.pick``), in-process, for 1 to 1,000
   backends and every strategy this version has;
2. the registry: time to register the records, its memory, the cost of one list;
3. per strategy, a router process over the 1,000 backends: time to sync,
   memory, and the proxy path under load (``llmsvc.bench.load.run_load``),
   beside a router over one backend and the backend directly;
4. propagation: how long until a backend registered (deregistered) on the
   registry is routed to (refused) by the router, with no other watcher, then
   with 50 watchers blocked on ``?type=openai-api``, then on the whole list;
5. a health round: a registry checking all 10,000 records every few seconds.

The backends are one process listening on 1,000 ports (``benchmarks/common/backend.py``);
every record points at one of its ports, so every health check should pass.

    python benchmarks/scale/study.py --out benchmarks/scale/results.json    # make scale
    python benchmarks/scale/study.py --backends 20 --records 100 --watchers 5   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, get_args

import aiohttp

from llmsvc.router.settings import Strategy

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the root: benchmarks.*

from benchmarks.scale.measure import decision_time
from benchmarks.scale.phases import (
    baseline_phase,
    health_phase,
    propagation_phase,
    registry_phase,
    router_phase,
    rss,
    say,
)
from benchmarks.scale.processes import Children
from benchmarks.scale.report import render

STRATEGIES: tuple[str, ...] = get_args(Strategy)


def machine() -> dict[str, Any]:
    """What the numbers were measured on, and how busy it was."""
    model = ""
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as meminfo:
        mem_kb = int(meminfo.readline().split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "commit": _git_commit(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _git_commit() -> str | None:
    """The commit, with ``+changes`` when the working tree differs from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+changes" if changes else "")


async def study(args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine(), "parameters": _parameters(args)}
    say("decision time, in-process")
    sizes = sorted({n for n in (1, 10, 100, 1000) if n <= args.backends} | {args.backends})
    results["decision"] = [
        decision_time(s, n, args.iterations if n < 1000 else max(args.iterations // 10, 100))
        for s in STRATEGIES
        for n in sizes
    ]
    children = Children(log_dir)
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        try:
            await _processes(args, children, session, results)
        finally:
            await children.stop_all()
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return results


async def _processes(
    args: argparse.Namespace,
    children: Children,
    session: aiohttp.ClientSession,
    results: dict[str, Any],
) -> None:
    say(f"listener on {args.backends + 1} ports, registry, {args.records} records")
    listener, ports = await children.listener(args.backends + 1)
    probe_port, ports = ports[-1], ports[:-1]
    registry, registry_url, results["registry"] = await registry_phase(
        args, children, session, ports
    )
    results["listener_rss_mib"] = rss(listener)
    results["routers"] = []
    for strategy in args.strategies:
        entry, router, url = await router_phase(args, children, session, registry_url, strategy)
        results["routers"].append(entry)
        if router is None:
            continue
        if "propagation" not in results:
            results["propagation"] = await propagation_phase(
                args, session, registry, registry_url, url, probe_port
            )
            results["propagation_router"] = strategy
        await children.stop(router)
    results["registry"]["rss_end_mib"] = rss(registry)
    results["baseline"] = await baseline_phase(args, children, session, ports[0])
    await children.stop(registry)
    if args.health_round:
        results["health_round"] = await health_phase(args, children, session, ports)


def _parameters(args: argparse.Namespace) -> dict[str, Any]:
    values = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    values["command"] = " ".join(["python", "benchmarks/scale/study.py", *sys.argv[1:]])
    return values


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--backends", type=int, default=1000, help="routable backends (ports of the listener)")
    add("--records", type=int, default=10000, help="registry records in all (backends included)")
    add("--watchers", type=int, default=50, help="blocking-query watchers beside the router")
    add("--rounds", type=int, default=5, help="register/deregister rounds per watcher setup")
    add("--requests", type=int, default=3000, help="requests per load run")
    add("--concurrency", type=int, default=16, help="load concurrency")
    add("--iterations", type=int, default=20000, help="in-process decisions per measurement")
    add("--strategies", default="all-present",
        help="router strategies to run as processes, comma list; all-present: every one this "
        "version implements")  # fmt: skip
    add("--health-round", type=float, default=5.0, metavar="S",
        help="a registry checking the records every S seconds (0: skip)")  # fmt: skip
    add("--out", type=Path, help="write the JSON results here")
    add("--log-dir", type=Path, help="keep the processes' logs here (default: a temporary one)")
    add("--json", action="store_true", help="print JSON, not Markdown tables")
    args = parser.parse_args(argv)
    names = [s for s in args.strategies.split(",") if s]
    if "all-present" in names:
        names = [n for n in names if n != "all-present"]
        names += [s for s in STRATEGIES if s not in names]
    args.strategies = names
    if args.records < args.backends:
        parser.error("--records must be at least --backends")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="llmsvc-scale-") as tmp:
        results = asyncio.run(study(args, args.log_dir or Path(tmp)))
    text = json.dumps(results, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text if args.json else render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
