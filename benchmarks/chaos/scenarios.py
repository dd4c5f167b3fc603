"""The fault scenarios: steady load through a proxy, a fault to one backend, and a request log.

The load is closed-loop and paced, so that its shape does not depend on how
fast the machine is (two runs of ``llmsvc.bench.schedule.drive``, the one load
loop): ``chat_clients`` clients each send a non-streaming chat completion, wait
for the answer, pause ``pause`` seconds and go again; ``stream_clients`` clients
each keep one stream (``chunks`` chunks, 50 ms apart) open at all times. The
backends are two stand-in backends (``benchmarks/common/backend.py``). Every
request is logged: start, end, status, which backend served it (the backend
names itself in every answer), and for a stream how it ended.

* ``death``: SIGKILL backend b1 (its port refuses connections), start a new
  process on the same port ``down`` seconds later.
* ``blackhole``: SIGSTOP b1 (the kernel still accepts connections, nothing
  answers, streams in flight stall), SIGCONT ``down`` seconds later.

"Ready again" is when b1 answers its own ``GET /health`` directly again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from benchmarks.common.procfs import descendants, fd_count, rss_mib
from benchmarks.harness.loadgen import BENCH_KEY, CHAT_BODY, PATH, STREAM_BODY

from llmsvc.bench.schedule import Schedule, drive

HERE = Path(__file__).resolve().parent
BACKEND = HERE.parent / "common" / "backend.py"  # the stand-in backend
CHUNK_INTERVAL_S = 0.05

HOST = "127.0.0.1"
HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {BENCH_KEY}"}
_FINGERPRINT = re.compile(rb'"system_fingerprint":\s*"(b\d+)"')
SLOW_S = 0.5  # a first byte later than this met the fault (the backends answer in ms)


@dataclass
class Timing:
    warm: float = 2.0  # load before the fault
    down: float = 5.0  # the fault lasts this long (longer than any proxy takes to eject)
    observe: float = 8.0  # load after b1 is ready again
    chat_clients: int = 8
    stream_clients: int = 4
    pause: float = 0.01
    chunks: int = 20  # a stream lasts chunks x 50 ms


@dataclass
class Request:
    stream: bool
    start: float
    end: float = 0.0
    first: float | None = None  # first body byte
    status: int = 0
    backend: str | None = None
    outcome: str = "failed"  # ok | cut_error | cut_silent | failed
    error: str | None = None


@dataclass
class Run:
    """What one scenario against one proxy did: events (wall clock) and every request."""

    event: float = 0.0
    recovered: float = 0.0  # restart or SIGCONT
    ready: float = 0.0
    requests: list[Request] = field(default_factory=list)
    samples: list[dict[str, float]] = field(default_factory=list)  # proxy RSS/fds
    view: list[tuple[float, bool]] = field(default_factory=list)  # (time, b1 eligible)


def _classify_stream(body: bytes) -> str:
    events = [ln[6:] for ln in body.split(b"\n") if ln.startswith(b"data: ")]
    if b"[DONE]" in events and not any(e.startswith(b'{"error"') for e in events):
        return "ok"
    if events and events[-1].startswith(b'{"error"'):
        return "cut_error"
    return "cut_silent"


def stream_flags(chunks: int) -> list[str]:
    """The stand-in backend's flags for streams of ``chunks`` chunks, 50 ms apart."""
    interval = str(CHUNK_INTERVAL_S)
    return ["--chunks", str(chunks), "--first-chunk-delay", interval, "--chunk-interval", interval]


async def logged_request(session: aiohttp.ClientSession, url: str, stream: bool) -> Request:
    """One chat completion (or stream) through the proxy, as the request log records it."""
    rec = Request(stream=stream, start=time.time())
    body = b""
    try:
        async with session.post(url, data=STREAM_BODY if stream else CHAT_BODY) as resp:
            rec.status = resp.status
            try:
                async for piece in resp.content.iter_any():
                    if rec.first is None:
                        rec.first = time.time()
                    body += piece
            except (aiohttp.ClientError, TimeoutError) as exc:
                rec.error = type(exc).__name__  # cut: the outcome comes from what arrived
        if rec.status == 200 and stream:
            rec.outcome = _classify_stream(body)
        elif rec.status == 200 and rec.error is None and b'"choices"' in body:
            rec.outcome = "ok"
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        rec.error = f"{type(exc).__name__}: {exc}"
    rec.end = time.time()
    found = _FINGERPRINT.search(body)
    rec.backend = found.group(1).decode() if found else None
    return rec


class Backends:
    """The two backend processes; b1 is the one faults are done to."""

    def __init__(self, ports: list[int], work: Path, chunks: int) -> None:
        self.ports = ports
        self.work = work
        self.chunks = chunks
        self.procs: list[subprocess.Popen[bytes]] = [self.start(i) for i in range(len(ports))]

    def start(self, index: int) -> subprocess.Popen[bytes]:
        cmd = [
            sys.executable, str(BACKEND), "--port", str(self.ports[index]),
            "--name", f"b{index}", *stream_flags(self.chunks),
        ]  # fmt: skip
        with (self.work / f"b{index}.log").open("ab") as out:
            return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)

    def restart(self, index: int) -> None:
        self.procs[index] = self.start(index)

    def signal(self, index: int, sig: signal.Signals) -> None:
        os.kill(self.procs[index].pid, sig)
        if sig == signal.SIGKILL:
            self.procs[index].wait()

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
            proc.wait()


async def healthy(port: int, timeout: float = 10.0) -> float:
    """Wall-clock time when ``GET /health`` of the backend on ``port`` first answers 200."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.2)) as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                async with session.get(f"http://{HOST}:{port}/health") as resp:
                    if resp.status == 200:
                        return time.time()
            await asyncio.sleep(0.02)
    raise RuntimeError(f"backend on port {port} not healthy within {timeout:g}s")


def proc_sample(pid: int) -> dict[str, float]:
    """RSS (MiB) and open file descriptors of ``pid`` and its descendants."""
    rss, fds = 0.0, 0
    for p in descendants(pid):
        with contextlib.suppress(OSError, RuntimeError):  # gone, or a zombie
            rss += rss_mib(p)
            fds += fd_count(p)
    return {"t": time.time(), "rss_mib": round(rss, 1), "fds": fds}


async def run_scenario(
    scenario: str,
    proxy_port: int,
    backends: Backends,
    timing: Timing,
    sample: Callable[[], dict[str, float]] | None = None,
    view_path: str | None = None,
) -> Run:
    run = Run()
    stop = asyncio.Event()
    url = f"http://{HOST}:{proxy_port}{PATH}"
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=HEADERS) as s:

        async def chat(n: int) -> Request:
            return await logged_request(s, url, stream=False)

        async def stream(n: int) -> Request:
            return await logged_request(s, url, stream=True)

        log = run.requests.append
        load = asyncio.gather(
            drive(Schedule(concurrency=timing.chat_clients, pause=timing.pause), chat,
                  on_result=log, drain=stop),
            drive(Schedule(concurrency=timing.stream_clients), stream, on_result=log, drain=stop),
        )  # fmt: skip
        sampler = asyncio.create_task(_sampler(sample, run, stop)) if sample else None
        viewer = (
            asyncio.create_task(watch_view(s, f"http://{HOST}:{proxy_port}{view_path}", run, stop))
            if view_path
            else None
        )
        await asyncio.sleep(timing.warm)
        run.event = time.time()
        backends.signal(1, signal.SIGKILL if scenario == "death" else signal.SIGSTOP)
        await asyncio.sleep(timing.down)
        run.recovered = time.time()
        if scenario == "death":
            backends.restart(1)
        else:
            backends.signal(1, signal.SIGCONT)
        run.ready = await healthy(backends.ports[1])
        await asyncio.sleep(timing.observe)
        stop.set()
        await load
        for task in (sampler, viewer):
            if task:
                await task
    return run


async def watch_view(
    session: aiohttp.ClientSession, url: str, run: Run, stop: asyncio.Event, every: float = 0.1
) -> None:
    """The proxy's own view of b1 (llmsvc's ``/services``), every ``every`` seconds."""
    while not stop.is_set():
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
            async with session.get(url) as resp:
                views = (await resp.json())["services"]
            eligible = any(v["name"] == "b1" and v["eligible"] for v in views)
            run.view.append((time.time(), eligible))
        await asyncio.sleep(every)


async def _sampler(sample: Callable[[], dict[str, float]], run: Run, stop: asyncio.Event) -> None:
    while not stop.is_set():
        run.samples.append(sample())
        await asyncio.sleep(0.25)


def summarize(run: Run) -> dict[str, Any]:
    """The table's numbers from the request log (times in s, 0.1 s resolution)."""
    chats = [r for r in run.requests if not r.stream]
    streams = [r for r in run.requests if r.stream]
    cut = [r for r in streams if r.outcome in ("cut_error", "cut_silent")]
    during = [r for r in run.requests if run.event <= r.start < run.recovered]
    slow = _slow_threshold([r for r in run.requests if r.end < run.event])
    hit = [r for r in during if r.outcome != "ok" or first_byte_s(r) > slow]
    back = [r.start for r in run.requests if r.start >= run.ready and r.backend == "b1"]
    before = [s for s in run.samples if s["t"] < run.event]
    fault = [s for s in run.samples if run.event <= s["t"] < run.ready + 1.0]
    return {
        "requests": len(chats),
        "failed": sum(r.outcome != "ok" for r in chats),
        "streams": len(streams),
        "streams_failed": sum(r.outcome == "failed" for r in streams),
        "streams_cut_with_error": sum(r.outcome == "cut_error" for r in streams),
        "streams_cut_silently": sum(r.outcome == "cut_silent" for r in streams),
        "new_streams_failed": sum(r.outcome != "ok" for r in streams if r.start >= run.event),
        "cut_streams_ended_after_s": _round(max((r.end - run.event for r in cut), default=None)),
        # When the last request that met the fault started; None: no client noticed it.
        "eject_s": _round(max(r.start - run.event for r in hit)) if hit else None,
        "readmit_s": _round(min(back) - run.ready if back else None),
        "observed_after_ready_s": _round(
            max((r.start for r in run.requests), default=0) - run.ready
        ),
        "view_out_s": _round(
            next((t - run.event for t, ok in run.view if t >= run.event and not ok), None)
        ),
        "view_back_s": _round(
            next((t - run.ready for t, ok in run.view if t >= run.ready and ok), None)
        ),
        "slow_s": round(slow, 2),
        "proxy_before": _peak(before),
        "proxy_during": _peak(fault),
        "errors_seen": sorted(
            {f"{r.status} {r.error or ''}".strip() for r in run.requests if r.outcome == "failed"}
        )[:5],
    }


def first_byte_s(r: Request) -> float:
    return (r.first or r.end) - r.start


def _slow_threshold(before: list[Request]) -> float:
    """Slower than this met the fault: :data:`SLOW_S`, or twice the slowest first byte
    before the fault when the proxy itself is that slow (LiteLLM on a busy machine)."""
    return max(SLOW_S, 2 * max((first_byte_s(r) for r in before), default=0.0))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _peak(samples: list[dict[str, float]]) -> dict[str, float] | None:
    if not samples:
        return None
    return {"rss_mib": max(s["rss_mib"] for s in samples), "fds": max(s["fds"] for s in samples)}


def log_rows(run: Run) -> list[dict[str, Any]]:
    return [asdict(r) for r in run.requests]
