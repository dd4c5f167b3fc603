"""Load generators: ``wrk`` when it is installed, ``llmsvc bench``'s ``run_load`` otherwise.

``wrk`` (C, one thread) leaves the CPU to the proxy under test and is what the
published numbers use. ``run_load`` is the fallback (and what the smoke test
uses, so that it needs nothing installed); streams are measured on the same
load loop (``llmsvc.bench.schedule.drive``): the time to the first chunk and,
when the backend's first chunk still carries its ``sent_ns`` stamp, how long the
proxy held that chunk.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

from llmsvc.bench.load import LoadSpec, run_load
from llmsvc.bench.schedule import Schedule, drive
from llmsvc.bench.stats import percentile

HERE = Path(__file__).resolve().parent
WRK_SCRIPT = HERE / "post.lua"

CHAT_BODY = orjson.dumps(
    {
        "model": "bench-model",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Say hello in one short sentence, please."},
        ],
        "max_tokens": 16,
    }
)
STREAM_BODY = orjson.dumps({**orjson.loads(CHAT_BODY), "stream": True})
PATH = "/v1/chat/completions"
# Sent with every request (post.lua too): LiteLLM's proxy refuses to start without a key.
BENCH_KEY = "sk-llmsvc-bench-0123456789abcdef0123456789abcdef"
HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {BENCH_KEY}"}
_SENT_NS = re.compile(rb'"sent_ns":\s*(\d+)')


@dataclass
class LoadResult:
    """One closed-loop run: ``requests`` answered 2xx in ``seconds``; latencies in ms."""

    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    tool: str

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


@dataclass
class StreamResult:
    """Sequential streams: time to first chunk, and the proxy's hold of it (ms)."""

    ttft_ms: list[float] = field(default_factory=list)
    hold_ms: list[float] = field(default_factory=list)
    errors: int = 0

    def summary(self) -> dict[str, float | int | None]:
        return {
            "streams": len(self.ttft_ms),
            "errors": self.errors,
            "ttft_p50_ms": _median(self.ttft_ms),
            "first_chunk_hold_p50_ms": _median(self.hold_ms),
            "first_chunk_hold_max_ms": max(self.hold_ms) if self.hold_ms else None,
        }


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


# --- wrk -----------------------------------------------------------------------------------


def run_wrk(url: str, *, connections: int, seconds: float) -> LoadResult:
    """``wrk`` with one thread, POSTing :data:`CHAT_BODY` (``post.lua``)."""
    cmd = [
        "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
        "-s", str(WRK_SCRIPT), url + PATH,
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=True)
    return parse_wrk(out.stdout)


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def parse_wrk(text: str) -> LoadResult:
    total = int(re.search(r"(\d+) requests in ([\d.]+)(\w+)", text).group(1))  # type: ignore[union-attr]
    secs = re.search(r"requests in ([\d.]+)(ms|s|m)", text)
    seconds = _ms(secs.group(1) + secs.group(2)) / 1000.0  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    errors = int(non2xx.group(1)) if non2xx else 0
    errors += sum(int(g) for g in sock.groups()) if sock else 0
    p50 = re.search(r"^\s+50%\s+(\S+)", text, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", text, re.MULTILINE)
    return LoadResult(
        requests=total - (int(non2xx.group(1)) if non2xx else 0),
        errors=errors,
        seconds=seconds,
        p50_ms=_ms(p50.group(1)) if p50 else float("nan"),
        p99_ms=_ms(p99.group(1)) if p99 else float("nan"),
        tool="wrk",
    )


# --- llmsvc bench's load loop ------------------------------------------------------------


def run_python(host: str, port: int, *, connections: int, seconds: float) -> LoadResult:
    """``run_load`` (``llmsvc bench``'s loop and client): ``connections`` in flight."""
    spec = LoadSpec(
        url=f"http://{host}:{port}", model="bench-model", concurrency=connections,
        duration=seconds, max_tokens=16, api_key=BENCH_KEY,
    )  # fmt: skip
    results = asyncio.run(run_load(spec))
    ordered = sorted(s.latency_s * 1000.0 for s in results.ok) or [float("nan")]
    return LoadResult(
        requests=len(results.ok),
        errors=len(results.samples) - len(results.ok),
        seconds=results.elapsed_s,
        p50_ms=percentile(ordered, 50),
        p99_ms=percentile(ordered, 99),
        tool="python",
    )


async def _stream_once(session: aiohttp.ClientSession, url: str) -> tuple[float, float | None]:
    """One stream: ms to its first piece, and how long the proxy held that piece (or None)."""
    sent = time.perf_counter()
    async with session.post(url, data=STREAM_BODY, headers=HEADERS) as resp:
        if resp.status != 200:
            await resp.read()
            raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status)
        first = await resp.content.readany()
        received_ns, first_at = time.time_ns(), time.perf_counter()
        await resp.read()
    stamp = _SENT_NS.search(first)
    hold = (received_ns - int(stamp.group(1))) / 1e6 if stamp else None
    return (first_at - sent) * 1000.0, hold


async def _streams(host: str, port: int, count: int) -> StreamResult:
    result = StreamResult()
    url = f"http://{host}:{port}{PATH}"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:

        async def send(n: int) -> tuple[float, float | None] | None:
            try:
                return await _stream_once(session, url)
            except (aiohttp.ClientError, TimeoutError):
                return None

        driven = await drive(Schedule(concurrency=1, requests=count), send)
    for measured in driven.results:
        if measured is None:
            result.errors += 1
            continue
        result.ttft_ms.append(measured[0])
        if measured[1] is not None:
            result.hold_ms.append(measured[1])
    return result


def run_streams(host: str, port: int, *, count: int) -> StreamResult:
    """``count`` streams one after another (``llmsvc.bench.schedule.drive``, one client)."""
    return asyncio.run(_streams(host, port, count))
