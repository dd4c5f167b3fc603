"""The hung-engine case: one of two backends SIGSTOPped under OPEN-loop load, default settings.

A closed loop hides what a hang costs: its clients wait on the frozen backend
and stop sending. Here requests keep arriving at a fixed rate whatever the
answers do (``llmsvc.bench.schedule.drive`` with ``arrivals``):
``rate`` non-streaming chat completions per second and ``stream_rate``
streams per second (``chunks`` chunks, 50 ms apart). Every client gives up
after ``client_timeout`` seconds (the backends answer in milliseconds, so a
request that waits that long was held by the frozen backend, which a real
hung engine would never answer: that is the request the hang lost).

Timeline: ``warm`` seconds of load, SIGSTOP of backend b1 (the kernel still
accepts connections, nothing answers), SIGCONT ``down`` seconds later, then
``observe`` seconds of load after b1 answers its own ``GET /health`` again.
The proxies run with their default settings (``defaults.py``).
"""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from benchmarks.chaos.scenarios import (
    HEADERS,
    HOST,
    SLOW_S,
    Backends,
    Request,
    Run,
    first_byte_s,
    healthy,
    logged_request,
    watch_view,
)
from benchmarks.harness.loadgen import PATH

from llmsvc.bench.schedule import Schedule, drive
from llmsvc.bench.stats import percentile

TARGET_FAILED_PCT = 0.5  # issue 11's target: at most this share of requests failed ...
TARGET_EJECT_S = 2.0  # ... and the hung backend out of rotation within this many seconds
VIEW_EVERY_S = 0.05  # how often the proxy's own view is read (the resolution of its eject time)


@dataclass(frozen=True)
class HungTiming:
    warm: float = 3.0  # load before the fault
    down: float = 8.0  # how long b1 is stopped
    observe: float = 4.0  # load after b1 is ready again
    rate: float = 40.0  # non-streaming chat completions per second
    stream_rate: float = 2.0  # streams per second
    chunks: int = 20  # a stream lasts chunks x 50 ms
    client_timeout: float = 5.0  # a client gives up (the request failed) after this long
    waited_s: float = 2.0  # a first byte later than this: the request "waited"


QUICK = HungTiming(warm=1.0, down=3.0, observe=1.5, rate=20.0, stream_rate=2.0)


def fixed_rate(rate: float, horizon: float) -> list[float]:
    """Send times (s from the start) of one request every ``1 / rate`` s up to ``horizon``."""
    return [n / rate for n in range(int(rate * horizon) + 1)]


async def run_hung(
    proxy_port: int, backends: Backends, timing: HungTiming, view_path: str | None = None
) -> Run:
    """The case against the proxy on ``proxy_port``; every request is in the returned log."""
    run = Run()
    drain, stopped = asyncio.Event(), asyncio.Event()
    url = f"http://{HOST}:{proxy_port}{PATH}"
    view_url = f"http://{HOST}:{proxy_port}{view_path}"
    # Arrivals for longer than the run can last; the drain ends them when the run is over.
    horizon = timing.warm + timing.down + timing.observe + 30.0
    # aiohttp rounds a timeout above its ceil threshold up to a whole second of loop time.
    connector = aiohttp.TCPConnector(limit=0, timeout_ceil_threshold=3600)
    timeout = aiohttp.ClientTimeout(total=timing.client_timeout, ceil_threshold=3600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=HEADERS) as s:

        async def chat(n: int) -> Request:
            return await logged_request(s, url, stream=False)

        async def stream(n: int) -> Request:
            return await logged_request(s, url, stream=True)

        log = run.requests.append
        load = asyncio.gather(
            drive(Schedule(arrivals=fixed_rate(timing.rate, horizon)), chat,
                  on_result=log, drain=drain),
            drive(Schedule(arrivals=fixed_rate(timing.stream_rate, horizon)), stream,
                  on_result=log, drain=drain),
        )  # fmt: skip
        viewer = (
            asyncio.create_task(watch_view(s, view_url, run, stopped, every=VIEW_EVERY_S))
            if view_path
            else None
        )
        await asyncio.sleep(timing.warm)
        run.event = time.time()
        backends.signal(1, signal.SIGSTOP)
        await asyncio.sleep(timing.down)
        run.recovered = time.time()
        backends.signal(1, signal.SIGCONT)
        run.ready = await healthy(backends.ports[1])
        await asyncio.sleep(timing.observe)
        drain.set()
        await load
        stopped.set()
        if viewer:
            await viewer
    return run


def summarize_hung(run: Run, timing: HungTiming) -> dict[str, Any]:
    """The hung-engine table's numbers from the request log (times in s, to 0.1 s)."""
    failed = [r for r in run.requests if r.outcome != "ok"]
    during = [r for r in run.requests if run.event <= r.start < run.recovered]
    hit = [r for r in during if r.outcome != "ok" or first_byte_s(r) > SLOW_S]
    latencies = sorted(r.end - r.start for r in during if not r.stream)
    sent = len(run.requests)
    return {
        "requests": sent,
        "failed": len(failed),
        "failed_pct": round(100 * len(failed) / sent, 2) if sent else None,
        "streams": sum(r.stream for r in run.requests),
        "streams_failed": sum(r.stream for r in failed),
        "fault_s": round(run.recovered - run.event, 1),
        # When the last request that met the fault was sent; None: no client noticed it.
        "eject_s": round(max(r.start - run.event for r in hit), 1) if hit else None,
        # The proxy's own view (llmsvc's /services): when b1 first showed as not eligible.
        "has_view": bool(run.view),
        "view_out_s": _view_out(run),
        "p99_during_s": round(percentile(latencies, 99), 2) if latencies else None,
        "waited": sum(first_byte_s(r) > timing.waited_s for r in run.requests),
        "errors_seen": sorted({f"{r.status} {r.error or ''}".strip() for r in failed})[:5],
    }


def _view_out(run: Run) -> float | None:
    out = (t - run.event for t, eligible in run.view if t >= run.event and not eligible)
    found = next(out, None)
    return None if found is None else round(found, 1)


def ejection_s(r: dict[str, Any]) -> float | None:
    """When the hung backend was out: the later of the client log's and the proxy's own view
    (where it has one); None when it was never out (or nobody noticed the fault, 0)."""
    seen = r["eject_s"] or 0.0
    if not r["has_view"]:
        return seen
    return None if r["view_out_s"] is None else max(seen, r["view_out_s"])


def meets_target(r: dict[str, Any]) -> bool:
    """Issue 11's target, from the measurements: few enough failed and ejected soon enough."""
    eject = ejection_s(r)
    return (
        r["failed_pct"] is not None
        and r["failed_pct"] <= TARGET_FAILED_PCT
        and eject is not None
        and eject <= TARGET_EJECT_S
    )
