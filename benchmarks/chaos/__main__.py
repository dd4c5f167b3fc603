"""Fault harness (``make chaos``): backend death and a black-holed backend, under load, through
llmsvc, nginx, HAProxy, LiteLLM and vLLM production-stack's router, in one run.

    .venv/bin/python benchmarks/chaos                                  # everything
    .venv/bin/python benchmarks/chaos --proxies llmsvc --quick --out DIR   # the smoke run

For each proxy and scenario: two fresh stand-in backends (``benchmarks/common/backend.py``), a fresh
proxy in front of them, steady load (``scenarios.py``), the fault to backend
b1, and the request log turned into the table's numbers. Results go to
``results.json`` and ``results.md`` in ``--out``; ``--doc FILE`` also replaces
the table between ``<!-- chaos-table -->`` and ``<!-- /chaos-table -->`` there.
A proxy that cannot be installed or started is reported with the reason.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the root: benchmarks.*

from benchmarks.chaos.proxies import PROXIES, Proxy, Unavailable
from benchmarks.chaos.scenarios import (
    HOST,
    Backends,
    Timing,
    healthy,
    proc_sample,
    run_scenario,
    summarize,
)
from benchmarks.chaos.table import markdown, replace_table
from benchmarks.common.ports import free_port
from benchmarks.common.processes import last_line, start, stop
from benchmarks.common.procfs import machine

DEFAULT_PROXIES = "llmsvc,nginx,haproxy,litellm,production-stack"
SCENARIOS = ("death", "blackhole")


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


async def one(
    proxy: Proxy, scenario: str, args: argparse.Namespace, timing: Timing
) -> dict[str, Any]:
    work = args.work / proxy.name / scenario
    work.mkdir(parents=True, exist_ok=True)
    ports = [free_port() for _ in range(3)] if not args.ports else args.ports
    backends = Backends(ports[1:], work, timing.chunks)
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
        run = await run_scenario(
            scenario, ports[0], backends, timing, lambda: proc_sample(pid), proxy.view_path
        )
        (work / "requests.json").write_bytes(orjson.dumps([r.__dict__ for r in run.requests]))
        return summarize(run)
    finally:
        if proc is not None:
            stop(proc)
        backends.close()


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    timing = Timing(warm=1.0, down=1.5, observe=2.5) if args.quick else Timing()
    started = {
        "utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "loadavg_1m": loadavg(),
        **machine(),
    }
    results: dict[str, Any] = {}
    for name in args.proxies:
        proxy = PROXIES[name]
        entry: dict[str, Any] = {"settings": proxy.settings}
        try:
            proxy.install()
            for scenario in args.scenarios:
                print(f"{name}: {scenario} ...", flush=True)
                entry[scenario] = await one(proxy, scenario, args, timing)
                print(f"{name}: {scenario}: {entry[scenario]}", flush=True)
        except (Unavailable, OSError, subprocess.SubprocessError, RuntimeError) as exc:
            entry["unavailable"] = (
                str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            )
            print(f"{name}: unavailable: {entry['unavailable']}", flush=True)
        results[name] = entry
    return {
        "command": "python benchmarks/chaos " + " ".join(sys.argv[1:]),
        "machine_at_start": started,
        "loadavg_1m_at_end": loadavg(),
        "timing": timing.__dict__,
        "proxies": results,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--proxies", default=DEFAULT_PROXIES, help="comma list of " + ", ".join(PROXIES)
    )
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument(
        "--quick", action="store_true", help="short timeline (the make test smoke run)"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/chaos/results"))
    parser.add_argument("--work", type=Path, default=Path(".bench/chaos"))
    parser.add_argument("--doc", type=Path, help="markdown file whose chaos table to replace")
    parser.add_argument("--ports", help="proxy,backend,backend ports (default: free ones)")
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM as Ctrl-C: the run is cancelled and stops the proxy and backends it started.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        results = asyncio.run(run_all(args))
    except KeyboardInterrupt:
        print(
            "chaos: interrupted; the proxies and backends it started are stopped", file=sys.stderr
        )
        return 130
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    table = markdown(results)
    (args.out / "results.md").write_text(table)
    if args.doc:
        replace_table(args.doc, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
