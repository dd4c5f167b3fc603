"""A bounded soak: the router under steady load for minutes, watched from /proc.

Starts a registry, two babysitters of the simulated engine (each registers its
engine), and a router with ``--workers 2`` reading the registry; then runs
``llmsvc bench``'s ``run_load`` against the router at a steady concurrency
(streaming and non-streaming requests, alternating per ``--chunk`` seconds) for
the whole duration. Every ``--sample-interval`` seconds it reads the RSS
(``VmRSS``) and the number of open file descriptors of each router worker from
``/proc``.

It asserts (exit status 1 and the reason when one fails):

- no request failed and every process still runs, with the same worker pids;
- every worker's RSS stays at most ``--rss-limit-mb`` (80 MB);
- after warm-up (the first ``--warmup`` fraction of the run), a worker's RSS
  grows by at most ``--rss-growth`` (5 %): the median of the last tenth of the
  samples against the median of the first tenth after warm-up;
- once the load stops, each worker's descriptors come back to the count before
  the load, taken after a few warm-up requests (idle upstream connections
  close after the engines' 75-second keep-alive, so the check waits up to
  ``--settle`` seconds); with ``--short`` the idle pool (about one connection
  per concurrent request) is allowed instead of waiting, and the RSS bounds
  are reported, not asserted.

Writes ``--out`` (results.json: machine, command, samples, verdicts) and prints
a short table.

    python benchmarks/soak/soak.py --minutes 10            # make soak SOAK_MINUTES=10
    python benchmarks/soak/soak.py --seconds 20 --short    # the version make test runs
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvloop

from llmsvc.bench.load import LoadSpec, run_load
from llmsvc.bench.report import report

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the root: benchmarks.common

from benchmarks.common.ports import free_port
from benchmarks.common.procfs import children, fd_count, rss_mib

HOST = "127.0.0.1"
MODEL = "soak-model"
HERE = Path(__file__).resolve().parent
WARM_UP_S = 6.0  # longer than the router's --health-interval 5 below: every check has run
SHORT_FD_SLACK = 8  # health checks, the registry watch, a connection closing as another opens


# -- processes -------------------------------------------------------------------------


@dataclass
class Stack:
    """The processes of the soak, each logging to a file in ``log_dir``."""

    log_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - the child owns it
        cmd = [sys.executable, "-m", "llmsvc", *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        self.procs[name] = proc
        return proc

    def dead(self) -> list[str]:
        return [name for name, p in self.procs.items() if p.poll() is not None]

    def stop(self) -> None:
        for proc in reversed(self.procs.values()):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs.values()):
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def wait_http(url: str, *, timeout: float = 60.0, check=None) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            resp = httpx.get(url, timeout=2)
            if resp.status_code == 200 and (check is None or check(resp)):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def start_stack(stack: Stack) -> tuple[str, int]:
    """Registry, two babysitters, a router with two workers; (router URL, router parent pid)."""
    reg_port = free_port()
    registry = f"http://{HOST}:{reg_port}"
    stack.start(
        "registry", "registry", "--port", str(reg_port), "--health-interval", "5",
        "--allow-anonymous-writes",  # the soak's own processes on 127.0.0.1
    )  # fmt: skip
    wait_http(registry + "/health")
    for i in range(2):
        port = free_port(pair=True)
        stack.start(
            f"engine-{i}", "babysitter", "--engine", "sim", "--model", MODEL,
            "--name", f"soak-engine-{i}", "--port", str(port), "--registry", registry,
            "--", "--engine-id", f"soak-engine-{i}", "--time-scale", "0.05",
        )  # fmt: skip
        wait_http(f"http://{HOST}:{port + 1}/health")
    router_port = free_port()
    router = f"http://{HOST}:{router_port}"
    parent = stack.start(
        "router", "router", "--port", str(router_port), "--workers", "2",
        "--registry-url", registry, "--registry-sync-interval", "2",
        "--health-interval", "5",
    )  # fmt: skip

    def both_engines(resp: httpx.Response) -> bool:
        return resp.json().get("healthy_backends", 0) >= 2

    wait_http(router + "/health", check=both_engines)
    # A new connection per probe: the kernel spreads them over the workers; both must see both.
    for _ in range(20):
        wait_http(router + "/health", check=both_engines)
    return router, parent.pid


def warm_up(router: str, *, wait: bool) -> None:
    """What every worker opens once and keeps (its metrics files, the health checks' and
    the registry watch's connections) is open before the baseline is counted."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for _ in range(20):  # a new connection each: the kernel spreads them over the workers
        httpx.post(router + "/v1/chat/completions", json=body, timeout=30).raise_for_status()
        httpx.get(router + "/metrics", timeout=30).raise_for_status()
    if wait:
        time.sleep(WARM_UP_S)


def worker_pids(parent: int) -> list[int]:
    """The live child processes of the router's parent (its workers)."""
    return sorted(children(parent))


# -- load ------------------------------------------------------------------------------


async def bench_runs(
    url: str, concurrency: int, until: float, chunk_s: float
) -> list[dict[str, Any]]:
    """``llmsvc bench``'s ``run_load`` back to back until ``until``, alternating streaming."""
    runs: list[dict[str, Any]] = []
    stream = False
    while (left := until - time.monotonic()) >= 1.0:
        spec = LoadSpec(
            url=url, model=MODEL, concurrency=concurrency, duration=round(min(chunk_s, left), 1),
            prompt_tokens=64, max_tokens=32, stream=stream,
        )  # fmt: skip
        runs.append(_bench_result(report(spec, await run_load(spec))))
        stream = not stream
    return runs


def _bench_result(data: dict[str, Any]) -> dict[str, Any]:
    counts = data["requests"]
    return {
        "exit": 130 if data["interrupted"] else 0,  # what `llmsvc bench` would exit with
        "stream": data["run"]["stream"],
        "ok": counts["ok"],
        "failed": counts["failed"],
        "errors": data["errors"],
        "requests_per_s": data["requests_per_s"],
        "latency_p50_s": (data.get("latency_s") or {}).get("p50"),
    }


async def load_and_sample(
    router: str, args: argparse.Namespace, workers: list[int], started: float, duration: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The load for ``duration`` seconds, and a sample of the workers every interval."""
    load = asyncio.ensure_future(
        bench_runs(router, args.concurrency, started + duration, args.chunk)
    )
    samples: list[dict[str, Any]] = []
    next_sample = started
    while not load.done():
        if time.monotonic() >= next_sample:
            samples.append(sample(workers, started))
            next_sample += args.sample_interval
        await asyncio.wait([load], timeout=0.1)
    samples.append(sample(workers, started))
    return load.result(), samples


# -- the soak --------------------------------------------------------------------------


def sample(workers: list[int], started: float) -> dict[str, Any]:
    return {
        "t": round(time.monotonic() - started, 2),
        "rss_mb": {str(pid): round(rss_mib(pid), 2) for pid in workers},
        "fds": {str(pid): fd_count(pid) for pid in workers},
    }


def settle_fds(
    workers: list[int], baseline: dict[str, int], timeout: float, allowance: int
) -> dict[str, int]:
    """Poll until every worker is back within ``allowance`` of its baseline or ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        counts = {str(pid): fd_count(pid) for pid in workers}
        back = all(counts[p] <= baseline[p] + allowance for p in counts)
        if back or time.monotonic() >= deadline:
            return counts
        time.sleep(1.0)


def fd_allowance(args: argparse.Namespace) -> int:
    """--short does not wait out the upstream keep-alive: the idle pool may stay open
    (about one connection per concurrent request, and the health checks')."""
    return args.concurrency + SHORT_FD_SLACK if args.short else 0


def verdicts(args: argparse.Namespace, result: dict[str, Any]) -> list[str]:
    """The bounds that failed, one line each (empty: the soak passed)."""
    failed: list[str] = []
    runs = result["load"]
    bad = sum(r["failed"] for r in runs)
    if bad or any(r["exit"] != 0 for r in runs):
        failed.append(f"{bad} requests failed: {[r['errors'] for r in runs if r['failed']]}")
    if not sum(r["ok"] for r in runs):
        failed.append("no request succeeded")
    if result["dead"]:
        failed.append(f"processes died: {result['dead']}")
    if result["workers_after"] != result["workers"]:
        failed.append(f"workers changed: {result['workers']} -> {result['workers_after']}")
    allowance = fd_allowance(args)
    for pid, base in result["fds_before"].items():
        after = result["fds_after"].get(pid, -1)
        if after > base + allowance:
            failed.append(f"worker {pid}: {after} fds after the load, {base} before")
    if not args.short:
        for pid, stats in result["rss"].items():
            if stats["max_mb"] > args.rss_limit_mb:
                failed.append(f"worker {pid}: RSS {stats['max_mb']} MB > {args.rss_limit_mb} MB")
            if stats["growth"] > args.rss_growth:
                failed.append(
                    f"worker {pid}: RSS grew {stats['growth']:.1%} after warm-up "
                    f"(> {args.rss_growth:.0%})"
                )
    return failed


def rss_stats(samples: list[dict[str, Any]], warmup_s: float) -> dict[str, dict[str, float]]:
    stats: dict[str, dict[str, float]] = {}
    pids = samples[0]["rss_mb"].keys() if samples else []
    for pid in pids:
        values = [s["rss_mb"][pid] for s in samples if pid in s["rss_mb"]]
        steady = [s["rss_mb"][pid] for s in samples if s["t"] >= warmup_s and pid in s["rss_mb"]]
        tenth = max(1, len(steady) // 10)
        first = statistics.median(steady[:tenth]) if steady else 0.0
        last = statistics.median(steady[-tenth:]) if steady else 0.0
        stats[pid] = {
            "start_mb": values[0],
            "max_mb": max(values),
            "after_warmup_mb": first,
            "end_mb": last,
            "growth": round((last - first) / first, 4) if first else 0.0,
        }
    return stats


def soak(args: argparse.Namespace) -> dict[str, Any]:
    duration = args.seconds if args.seconds is not None else args.minutes * 60
    with tempfile.TemporaryDirectory(prefix="llmsvc-soak-") as tmp:
        stack = Stack(Path(args.log_dir or tmp))
        try:
            router, parent = start_stack(stack)
            workers = worker_pids(parent)
            warm_up(router, wait=not args.short)
            fds_before = {str(pid): fd_count(pid) for pid in workers}
            started = time.monotonic()
            runs, samples = uvloop.run(load_and_sample(router, args, workers, started, duration))
            settle = 5.0 if args.short else args.settle
            fds_after = settle_fds(workers, fds_before, settle, fd_allowance(args))
            result: dict[str, Any] = {
                "duration_s": duration,
                "concurrency": args.concurrency,
                "short": args.short,
                "workers": workers,
                "workers_after": worker_pids(parent),
                "dead": stack.dead(),
                "fds_before": fds_before,
                "fds_after": fds_after,
                "rss": rss_stats(samples, duration * args.warmup),
                "load": runs,
                "samples": samples,
            }
        finally:
            stack.stop()
    result["requests_ok"] = sum(r["ok"] for r in result["load"])
    result["requests_failed"] = sum(r["failed"] for r in result["load"])
    result["machine"] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    result["command"] = " ".join(["python", "benchmarks/soak/soak.py", *sys.argv[1:]])
    result["failures"] = verdicts(args, result)
    return result


def table(result: dict[str, Any]) -> str:
    lines = [
        f"soak: {result['duration_s']:.0f} s at concurrency {result['concurrency']}, "
        f"{result['requests_ok']} requests ok, {result['requests_failed']} failed",
        f"{'worker':>8} {'RSS start':>10} {'after warm-up':>14} {'end':>8} {'max':>8} "
        f"{'growth':>7} {'fds before':>11} {'fds after':>10}",
    ]
    for pid, s in result["rss"].items():
        lines.append(
            f"{pid:>8} {s['start_mb']:>8.1f}MB {s['after_warmup_mb']:>12.1f}MB "
            f"{s['end_mb']:>6.1f}MB {s['max_mb']:>6.1f}MB {s['growth']:>7.1%} "
            f"{result['fds_before'][pid]:>11} {result['fds_after'][pid]:>10}"
        )
    lines.append("PASS" if not result["failures"] else "FAIL: " + "; ".join(result["failures"]))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="length of the load (default 10)")
    p.add_argument("--seconds", type=float, default=None, help="length in seconds instead")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight (default 16)")
    p.add_argument("--chunk", type=float, default=60.0, help="seconds per bench run (default 60)")
    p.add_argument("--sample-interval", type=float, default=5.0, help="seconds between samples")
    p.add_argument("--warmup", type=float, default=0.2, help="warm-up fraction (default 0.2)")
    p.add_argument("--rss-limit-mb", type=float, default=80.0, help="RSS bound per worker")
    p.add_argument("--rss-growth", type=float, default=0.05, help="growth bound after warm-up")
    p.add_argument("--settle", type=float, default=130.0, help="seconds for fds to come back")
    p.add_argument("--short", action="store_true", help="fds and errors only (a quick check)")
    p.add_argument("--out", type=Path, default=HERE / "results.json", help="results file")
    p.add_argument("--log-dir", default=None, help="keep the processes' logs here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = soak(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
