"""Side-by-side proxy benchmark: the backends alone, nginx, llmsvc, and other routers.

    .venv/bin/python benchmarks/harness                    # everything (make bench)
    .venv/bin/python benchmarks/harness --smoke --out DIR  # direct + llmsvc, about 1 s each
    .venv/bin/python benchmarks/harness --only-cpu         # the two CPU figures (~1.5 min)

For each target, in one run and against the same two fixed-answer backends
(``benchmarks/common/backend.py``): a warm-up, then ``--duration`` seconds of non-streaming chat
completions at concurrency 16 (requests/s, CPU ms per request from the
target's own ``/proc`` accounting), ``--duration`` seconds at concurrency 1
(p50/p99 latency, added over direct), and sequential streams (time to first
chunk, and how long the proxy held the first chunk). Then, restarted in front of two paced
backends (``--stream-chunks`` chunks per stream, one every ``--chunk-interval-ms``), the
target's CPU per streamed chunk over ``--stream-concurrency`` streams at a time
(``benchmarks/harness/paced.py``), with the ratio to nginx's; CPU per non-streamed request gets
its ratio to vllm-router's (issue 16's targets: 2x and 2.2x). Then llmsvc's CPU per
request with 2 to 1,000 backend records (``--only-cpu``: just the two CPU figures, no latency,
no sweep, for llmsvc-1w, nginx and vllm-router). ``llmsvc-base`` is the router at ``--base`` (the
commit before flow control) beside this one: the ratio of their CPU per request is flow
control's cost with no slots configured (``llmsvc-slots`` and ``llmsvc-queued``: with slots,
and with requests queued). Results go to ``results.json``,
``results.md`` and PNG plots in ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the root: benchmarks.*

from benchmarks.common.ports import free_port
from benchmarks.common.processes import last_line, start, stop
from benchmarks.common.procfs import CpuMeter, machine
from benchmarks.harness.loadgen import (
    BENCH_KEY,
    CHAT_BODY,
    PATH,
    STREAM_BODY,
    LoadResult,
    have_wrk,
    run_python,
    run_streams,
    run_wrk,
)
from benchmarks.harness.paced import PacedResult, run_paced
from benchmarks.harness.report import write_report
from benchmarks.harness.targets import (
    BASE,
    TARGETS,
    Target,
    Unavailable,
    apt_install,
    llmsvc_command,
)

HERE = Path(__file__).resolve().parent
BACKEND = HERE.parent / "common" / "backend.py"
HOST = "127.0.0.1"
DEFAULT_TARGETS = (
    "direct,nginx,llmsvc-1w,llmsvc-2w,llmsvc-base,llmsvc-slots,llmsvc-queued,"
    "vllm-router,litellm,production-stack"
)
ONLY_CPU_TARGETS = "llmsvc-1w,nginx,vllm-router"


def wait_ready(port: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """Until a chat completion through ``port`` answers 200."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise Unavailable(f"exited with {proc.returncode} at start")
        with contextlib.suppress(httpx.HTTPError):
            resp = httpx.post(
                f"http://{HOST}:{port}{PATH}",
                content=CHAT_BODY,
                headers={
                    "Content-Type": "application/json",
                    "Authorization": f"Bearer {BENCH_KEY}",
                },
                timeout=5.0,
            )
            if resp.status_code == 200:
                return
            last = f"{resp.status_code} {resp.text[:200]}"
        time.sleep(0.2)
    raise Unavailable(f"not answering 200 within {timeout:g}s (last: {last or 'no answer'})")


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.backends = [free_port(), free_port()]
        self.paced = [free_port(), free_port()]  # streams paced like an engine's tokens
        self.procs: list[subprocess.Popen[bytes]] = []
        self.unavailable: dict[str, str] = {}
        if args.loadgen != "python" and not have_wrk():
            apt_install("wrk")
        wrk = args.loadgen == "wrk" or (args.loadgen == "auto" and have_wrk())
        self.tool = "wrk" if wrk else "python"

    def load(self, port: int, connections: int, seconds: float) -> LoadResult:
        if self.tool == "wrk":
            return run_wrk(f"http://{HOST}:{port}", connections=connections, seconds=seconds)
        return run_python(HOST, port, connections=connections, seconds=seconds)

    def start_backends(self) -> None:
        pacing = [
            "--chunks", str(self.args.stream_chunks), "--first-chunk-delay", "0",
            "--chunk-interval", str(self.args.chunk_interval_ms / 1000.0),
        ]  # fmt: skip
        for i, port in enumerate(self.backends):
            cmd = [sys.executable, str(BACKEND), "--port", str(port), "--name", f"b{i}"]
            self.procs.append(start(cmd, self.work / f"backend{i}.log"))
        for i, port in enumerate(self.paced):
            cmd = [sys.executable, str(BACKEND), "--port", str(port), "--name", f"p{i}", *pacing]
            self.procs.append(start(cmd, self.work / f"paced{i}.log"))
        for port in self.backends + self.paced:
            wait_ready(port, None, 10.0)

    def run_target(self, target: Target) -> dict[str, Any]:
        result: dict[str, Any] = {"name": target.name, "description": target.description}
        if target.name in self.unavailable:  # no second install attempt in a later round
            return {**result, "status": "unavailable", "reason": self.unavailable[target.name]}
        print(f"== {target.name}: {target.description}", flush=True)
        proc = None
        try:
            target.install()
            # In front of the fixed-answer backends, then restarted in front of the paced ones.
            for backends, measure in ((self.backends, self.measure), (self.paced, self.streamed)):
                port = free_port()
                cmd = target.command(port, backends, self.work)
                if cmd:
                    proc = start(cmd, self.work / f"{target.name}.log", target.env)
                else:
                    port = backends[0]
                wait_ready(port, proc, target.startup_s)
                result.update(measure(port, proc))
                stop(proc)
                proc = None
            result["status"] = "ok"
        except (Unavailable, OSError, subprocess.SubprocessError) as exc:
            reason = str(exc) or type(exc).__name__
            if proc is not None and proc.poll() is not None:
                reason += ": " + last_line(self.work / f"{target.name}.log")
            result.update(status="unavailable", reason=reason)
            self.unavailable[target.name] = reason
            print(f"   unavailable: {result['reason']}", flush=True)
        finally:
            stop(proc)
        return result

    def measure(self, port: int, proc: subprocess.Popen[bytes] | None) -> dict[str, Any]:
        secs, conc = self.args.duration, self.args.concurrency
        self.load(port, conc, max(0.5, secs / 5))  # warm-up: connections, caches, JIT-less paths
        meter = CpuMeter(proc.pid if proc else None)
        meter.start()
        busy = self.load(port, conc, secs)
        cpu = meter.stop()
        out: dict[str, Any] = {
            "rps": round(busy.rps, 1),
            "errors": busy.errors,
            "cpu_s": round(cpu, 3),
            "cpu_ms_per_request": round(cpu * 1000 / busy.requests, 4) if busy.requests else None,
            f"p50_ms_c{conc}": round(busy.p50_ms, 3),
            f"p99_ms_c{conc}": round(busy.p99_ms, 3),
        }
        if not self.args.only_cpu:
            single = self.load(port, 1, secs)
            streams = run_streams(HOST, port, count=self.args.streams).summary()
            out["errors"] += single.errors
            out["p50_ms_c1"] = round(single.p50_ms, 3)
            out["p99_ms_c1"] = round(single.p99_ms, 3)
            out.update(
                {k: (round(v, 3) if isinstance(v, float) else v) for k, v in streams.items()}
            )
        print("   " + ", ".join(f"{k}={v}" for k, v in out.items()), flush=True)
        return out

    def streamed(self, port: int, proc: subprocess.Popen[bytes] | None) -> dict[str, Any]:
        """CPU per chunk over paced streams, ``--stream-concurrency`` at a time."""
        args = self.args

        def paced(seconds: float) -> PacedResult:
            return run_paced(
                HOST, port, path=PATH, body=STREAM_BODY, key=BENCH_KEY,
                concurrency=args.stream_concurrency, seconds=seconds,
            )  # fmt: skip

        paced(0.0)  # warm-up: one stream per connection
        meter = CpuMeter(proc.pid if proc else None)
        meter.start()
        client = time.process_time()  # the load generator runs in this process
        measured = paced(args.stream_duration or args.duration)
        out = measured.summary(meter.stop())
        if measured.chunks:  # to show the client is not what limits the pace
            client_us = (time.process_time() - client) * 1e6 / measured.chunks
            out["stream_client_cpu_us_per_chunk"] = round(client_us, 3)
        print("   " + ", ".join(f"{k}={v}" for k, v in out.items()), flush=True)
        return out

    def sweep(self, counts: list[int]) -> list[dict[str, Any]]:
        rows = []
        for count in counts:
            target = Target(f"llmsvc-1w-{count}", f"{count} records", llmsvc_command(1, count))
            print(f"== llmsvc, {count} backend records", flush=True)
            proc = None
            try:
                port = free_port()
                cmd = target.command(port, self.backends, self.work)
                proc = start(cmd, self.work / f"{target.name}.log")
                wait_ready(port, proc, target.startup_s)
                self.load(port, self.args.concurrency, max(0.5, self.args.duration / 5))
                meter = CpuMeter(proc.pid)
                meter.start()
                busy = self.load(port, self.args.concurrency, self.args.duration)
                cpu = meter.stop()
                row: dict[str, Any] = {
                    "backends": count,
                    "rps": round(busy.rps, 1),
                    "cpu_ms_per_request": round(cpu * 1000 / max(1, busy.requests), 4),
                }
            except (Unavailable, OSError, subprocess.SubprocessError) as exc:
                row = {"backends": count, "status": "unavailable", "reason": str(exc)}
            finally:
                stop(proc)
            print(f"   {row}", flush=True)
            rows.append(row)
        return rows

    def close(self) -> None:
        for proc in self.procs:
            stop(proc)


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One target's rounds: the median of each number over the rounds that worked."""
    ok = [r for r in runs if r.get("status", "ok") == "ok"]
    if not ok:
        return runs[-1]
    merged = dict(ok[0])
    for key, value in ok[0].items():
        values = [r[key] for r in ok if isinstance(r.get(key), int | float)]
        if isinstance(value, int | float) and len(values) == len(ok):
            merged[key] = round(statistics.median(values), 4)
    if len(runs) > 1:
        merged["rounds"] = runs
    return merged


def add_deltas(results: list[dict[str, Any]]) -> None:
    """Latency each target adds over the backends alone (same run, same load)."""
    direct = next((r for r in results if r["name"] == "direct" and r.get("status") == "ok"), None)
    if direct is None:
        return
    for r in results:
        if r.get("status") != "ok":
            continue
        for key in ("p50_ms_c1", "p99_ms_c1", "ttft_p50_ms"):
            if isinstance(r.get(key), float | int) and isinstance(direct.get(key), float | int):
                r["added_" + key] = round(r[key] - direct[key], 3)


def add_ratios(results: list[dict[str, Any]]) -> None:
    """Issue 16's two CPU ratios, same run: per streamed chunk to nginx's, per non-streamed
    request to vllm-router's."""
    ok = {r["name"]: r for r in results if r.get("status") == "ok"}
    for key, against in (("cpu_us_per_chunk", "nginx"), ("cpu_ms_per_request", "vllm-router")):
        floor = ok.get(against, {}).get(key)
        if not isinstance(floor, int | float) or floor <= 0:
            continue
        for r in ok.values():
            if isinstance(r.get(key), int | float):
                r[f"{key}_x_{against.replace('-', '_')}"] = round(r[key] / floor, 3)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks/harness", description=__doc__)
    parser.add_argument("--out", default=str(HERE.parents[1] / "docs" / "performance"))
    parser.add_argument(
        "--targets",
        help=f"comma list of targets (default: {DEFAULT_TARGETS}; --only-cpu: {ONLY_CPU_TARGETS})",
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians are reported")
    parser.add_argument("--streams", type=int, default=50, help="sequential streams per target")
    parser.add_argument("--sweep", default="2,10,100,1000", help="backend record counts ('' off)")
    parser.add_argument(
        "--stream-concurrency", type=int, default=32, help="paced streams at a time (CPU/chunk)"
    )
    parser.add_argument("--stream-chunks", type=int, default=200, help="chunks per paced stream")
    parser.add_argument(
        "--chunk-interval-ms", type=float, default=5.0, help="paced backends' gap between chunks"
    )
    parser.add_argument(
        "--stream-duration", type=float, help="seconds of paced streams (default: --duration)"
    )
    parser.add_argument(
        "--only-cpu",
        action="store_true",
        help="just CPU per request and per streamed chunk (no latency, no sweep), by default "
        f"for {ONLY_CPU_TARGETS}: about 1.5 minutes",
    )
    parser.add_argument(
        "--work", default=str(HERE.parents[1] / ".bench" / "run"), help="configs and logs"
    )
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument(
        "--base",
        default=BASE.ref,
        help="the commit llmsvc-base runs (a temporary git worktree, removed after): the "
        "router before flow control, for issue 13's cost ratio (default: %(default)s)",
    )
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="direct and llmsvc-1w only, short runs, the python load generator (for tests)",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.targets, args.duration, args.streams = "direct,llmsvc-1w", 0.3, 5
        args.sweep, args.loadgen, args.concurrency, args.repeat = "", "python", 4, 1
        # Chunks 10 ms apart: far enough that a loaded test machine still reads them one by one.
        args.stream_concurrency, args.stream_chunks, args.chunk_interval_ms = 4, 20, 10.0
    if args.only_cpu:
        args.sweep = ""
    args.targets = args.targets or (ONLY_CPU_TARGETS if args.only_cpu else DEFAULT_TARGETS)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        print(f"unknown target(s): {', '.join(unknown)}; known: {', '.join(TARGETS)}")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    bench = Bench(args, work)
    BASE.ref = args.base
    load_before = os.getloadavg()
    try:
        bench.start_backends()
        counts = [int(c) for c in args.sweep.split(",") if c.strip()]
        rounds, sweeps = [], []
        for round_ in range(args.repeat):  # interleaved: load drift hits every target alike
            print(f"-- round {round_ + 1} of {args.repeat}", flush=True)
            rounds.append([bench.run_target(TARGETS[name]) for name in names])
            sweeps.append(bench.sweep(counts) if counts else [])
        results = [merge([r[i] for r in rounds]) for i in range(len(names))]
        sweep = [merge([s[i] for s in sweeps]) for i in range(len(counts))]
    finally:
        bench.close()
        BASE.remove()
    add_deltas(results)
    add_ratios(results)
    document = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python", "benchmarks/harness", *(argv or sys.argv[1:])]),
        "machine": machine(),
        "load_average_1m": {"start": load_before[0], "end": os.getloadavg()[0]},
        "load_generator": bench.tool,
        "duration_s": args.duration,
        "repeat": args.repeat,
        "concurrency": args.concurrency,
        "streams": args.streams,
        "only_cpu": args.only_cpu,
        "paced": {
            "concurrency": args.stream_concurrency,
            "chunks_per_stream": args.stream_chunks,
            "chunk_interval_ms": args.chunk_interval_ms,
            "duration_s": args.stream_duration or args.duration,
        },
        "base": args.base,
        "targets": results,
        "backend_sweep": sweep,
    }
    write_report(document, out, plots_too=not args.no_plots)
    failed = [r["name"] for r in results if r.get("status") != "ok"]
    print(f"results in {out}" + (f"; unavailable: {', '.join(failed)}" if failed else ""))
    ok = all(not math.isnan(r.get("p50_ms_c1", 0.0)) for r in results if r.get("status") == "ok")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
