"""Fault harness (``make chaos``): backend death and a black-holed backend, under load, through
llmsvc, nginx, HAProxy, LiteLLM and vLLM production-stack's router, in one run; and a hung
backend under open-loop load through llmsvc, nginx and HAProxy at their default settings.

    .venv/bin/python benchmarks/chaos                                  # everything
    .venv/bin/python benchmarks/chaos --proxies llmsvc --quick --out DIR   # the smoke run
    .venv/bin/python benchmarks/chaos --scenarios hung --doc docs/reliability.md  # one case

For each proxy and scenario: two fresh stand-in backends (``benchmarks/common/backend.py``), a fresh
proxy in front of them, load (``scenarios.py``; ``hung.py`` for the hung case), the fault to
backend b1, and the request log turned into the table's numbers. ``death`` and ``blackhole``
(the proxies of ``proxies.py``, tuned alike) go to ``results.json`` and ``results.md`` in
``--out``; ``hung`` (the proxies of ``defaults.py``, at their defaults) to
``results-hung.json`` and ``results-hung.md``. ``--doc FILE`` also replaces the table of each
case that ran, between ``<!-- chaos-table -->`` and ``<!-- /chaos-table -->``, or
``<!-- chaos-defaults-table -->`` and ``<!-- /chaos-defaults-table -->``, there; the other
stays as it is. A proxy that cannot be installed or started is reported with the reason.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the root: benchmarks.*

from benchmarks.chaos.defaults import PROXIES_AT_DEFAULTS
from benchmarks.chaos.hung import QUICK, HungTiming, run_hung, summarize_hung
from benchmarks.chaos.proxies import PROXIES, Proxy
from benchmarks.chaos.scenarios import (
    HOST,
    Backends,
    Timing,
    healthy,
    proc_sample,
    run_scenario,
    summarize,
)
from benchmarks.chaos.table import (
    END,
    HUNG_END,
    HUNG_START,
    START,
    hung_markdown,
    markdown,
    replace_table,
)
from benchmarks.common.ports import free_port
from benchmarks.common.processes import last_line, start, stop
from benchmarks.common.procfs import machine
from benchmarks.harness.targets import Unavailable

HERE = Path(__file__).resolve().parent
DEFAULT_PROXIES = "llmsvc,nginx,haproxy,litellm,production-stack"
SCENARIOS = ("death", "blackhole", "hung")
# The hung case's "before" row: the same case run at the commit before issue 11's defaults.
HUNG_BEFORE = HERE / "results" / "results-hung-before.json"


@dataclass(frozen=True)
class Case:
    """One table: its scenarios, the proxies (and their settings) it runs, and where it goes."""

    scenarios: tuple[str, ...]
    proxies: dict[str, Proxy]
    stem: str  # results file names in --out: <stem>.json and <stem>.md
    markers: tuple[str, str]  # where its table goes in --doc


CASES = (
    Case(("death", "blackhole"), PROXIES, "results", (START, END)),
    Case(("hung",), PROXIES_AT_DEFAULTS, "results-hung", (HUNG_START, HUNG_END)),
)


async def wait_both(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Until requests through the proxy have been served by both backends."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    from benchmarks.chaos.scenarios import HEADERS, logged_request  # the load's client

    url = f"http://{HOST}:{port}/v1/chat/completions"
    async with aiohttp.ClientSession(headers=HEADERS, timeout=aiohttp.ClientTimeout(total=5)) as s:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise Unavailable(f"exited with {proc.returncode} at start")
            rec = await logged_request(s, url, stream=False)
            if rec.outcome == "ok" and rec.backend:
                seen.add(rec.backend)
                if len(seen) == 2:
                    return
            else:
                await asyncio.sleep(0.2)
    raise Unavailable(f"did not serve from both backends within {timeout:g}s")


def timings(quick: bool) -> tuple[Timing, HungTiming]:
    """The faults case's timeline and the hung case's (``--quick``: the short forms)."""
    if quick:
        return Timing(warm=1.0, down=1.5, observe=2.5), QUICK
    return Timing(), HungTiming()


async def one(proxy: Proxy, scenario: str, args: argparse.Namespace) -> dict[str, Any]:
    work = args.work / proxy.name / scenario
    work.mkdir(parents=True, exist_ok=True)
    ports = [free_port() for _ in range(3)] if not args.ports else args.ports
    timing, hung = timings(args.quick)
    backends = Backends(ports[1:], work, hung.chunks if scenario == "hung" else timing.chunks)
    proc: subprocess.Popen[bytes] | None = None
    try:
        for port in ports[1:]:
            await healthy(port)
        command = proxy.command(ports[0], ports[1:], work)
        proc = start(command, work / "proxy.log", proxy.env)
        try:
            await wait_both(ports[0], proc, proxy.startup_s)
        except Unavailable as exc:
            raise Unavailable(f"{exc}: {last_line(work / 'proxy.log', 200)}") from None
        pid = proc.pid
        if scenario == "hung":
            run = await run_hung(ports[0], backends, hung, proxy.view_path)
            result = summarize_hung(run, hung)
        else:
            run = await run_scenario(
                scenario, ports[0], backends, timing, lambda: proc_sample(pid), proxy.view_path
            )
            result = summarize(run)
        (work / "requests.json").write_bytes(orjson.dumps([r.__dict__ for r in run.requests]))
        events = {"fault": run.event, "recovered": run.recovered, "ready": run.ready}
        (work / "events.json").write_bytes(orjson.dumps({**events, "view": run.view}))
        return result
    finally:
        if proc is not None:
            stop(proc)
        backends.close()


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def command_line() -> str:
    """How this run was started (with ``PYTHONPATH`` when it points the run at another llmsvc)."""
    path = os.environ.get("PYTHONPATH")
    return (
        (f"PYTHONPATH={path} " if path else "")
        + "python benchmarks/chaos "
        + " ".join(sys.argv[1:])
    )


def llmsvc_commit() -> str:
    """The commit of the llmsvc this run imports (``+ uncommitted changes`` when its source
    differs from it): the router it starts is the same code (``PYTHONPATH`` and all)."""
    import llmsvc

    where = Path(llmsvc.__file__).resolve().parent
    try:
        sha = _git(where, "rev-parse", "--short", "HEAD")
        dirty = _git(where, "status", "--porcelain", "--", ".")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + (" + uncommitted changes" if dirty else "")


def _git(where: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True)
    done.check_returncode()
    return done.stdout.strip()


async def run_case(case: Case, args: argparse.Namespace) -> dict[str, Any]:
    timing, hung = timings(args.quick)
    started = {
        "utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "loadavg_1m": loadavg(),
        **machine(),
    }
    scenarios = [s for s in args.scenarios if s in case.scenarios]
    results: dict[str, Any] = {}
    for name in (p for p in args.proxies if p in case.proxies):
        proxy = case.proxies[name]
        entry: dict[str, Any] = {"settings": proxy.settings}
        try:
            proxy.install()
            for scenario in scenarios:
                print(f"{name}: {scenario} ...", flush=True)
                entry[scenario] = await one(proxy, scenario, args)
                print(f"{name}: {scenario}: {entry[scenario]}", flush=True)
        except (Unavailable, OSError, subprocess.SubprocessError, RuntimeError) as exc:
            entry["unavailable"] = (
                str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            )
            print(f"{name}: unavailable: {entry['unavailable']}", flush=True)
        results[name] = entry
    return {
        "command": command_line(),
        "llmsvc_commit": llmsvc_commit(),
        "machine_at_start": started,
        "loadavg_1m_at_end": loadavg(),
        "timing": asdict(hung) if case.scenarios == ("hung",) else asdict(timing),
        "proxies": results,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--proxies", default=DEFAULT_PROXIES, help="comma list of " + ", ".join(PROXIES)
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help="comma list of death, blackhole (the faults table, tuned proxies) and hung "
        "(the default-settings table, open loop)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="short timeline (the make test smoke run)"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/chaos/results"))
    parser.add_argument("--work", type=Path, default=Path(".bench/chaos"))
    parser.add_argument(
        "--doc", type=Path, help="markdown file whose tables (of the cases run) to replace"
    )
    parser.add_argument("--ports", help="proxy,backend,backend ports (default: free ones)")
    parser.add_argument(
        "--hung-before",
        type=Path,
        default=HUNG_BEFORE,
        help="an earlier run's results-hung.json whose llmsvc row the hung table shows first "
        "as 'before' (default: %(default)s, when it exists)",
    )
    args = parser.parse_args(argv)
    args.out, args.work = args.out.resolve(), args.work.resolve()  # nginx -p wants it whole
    args.proxies = [p for p in args.proxies.split(",") if p]
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    for name in args.proxies:
        if name not in PROXIES:
            parser.error(f"unknown proxy {name!r}; known: {', '.join(PROXIES)}")
    for scenario in args.scenarios:
        if scenario not in SCENARIOS:
            parser.error(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
    if args.ports:
        try:
            args.ports = [int(p) for p in args.ports.split(",")]
        except ValueError:
            parser.error("--ports: three integers, e.g. 9000,9001,9002")
        if len(args.ports) != 3:
            parser.error("--ports: three integers, e.g. 9000,9001,9002")
    return args


def case_table(case: Case, results: dict[str, Any], args: argparse.Namespace) -> str:
    if case.scenarios != ("hung",):
        return markdown(results)
    before = args.hung_before
    earlier = orjson.loads(before.read_bytes()) if before and before.is_file() else None
    return hung_markdown(results, earlier)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM as Ctrl-C: the run is cancelled and stops the proxy and backends it started.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    for case in CASES:
        if not set(args.scenarios) & set(case.scenarios):
            continue
        if not set(args.proxies) & set(case.proxies):
            known = ", ".join(case.proxies)
            print(f"chaos: {'/'.join(case.scenarios)} runs only {known}: skipped", file=sys.stderr)
            continue
        try:
            results = asyncio.run(run_case(case, args))
        except KeyboardInterrupt:
            print(
                "chaos: interrupted; the proxies and backends it started are stopped",
                file=sys.stderr,
            )
            return 130
        args.out.mkdir(parents=True, exist_ok=True)
        raw = orjson.dumps(results, option=orjson.OPT_INDENT_2)
        (args.out / f"{case.stem}.json").write_bytes(raw)
        table = case_table(case, results, args)
        (args.out / f"{case.stem}.md").write_text(table)
        if args.doc:
            replace_table(args.doc, table, *case.markers)
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
