"""Load generators: ``wrk`` when it is installed, a small asyncio client otherwise.

``wrk`` (C, one thread) leaves the CPU to the proxy under test and is what the
published numbers use. The asyncio client is the fallback (and what the smoke
test uses, so that it needs nothing installed); it also measures streams: the
time to the first chunk and, when the backend's first chunk still carries its
``sent_ns`` stamp, how long the proxy held that chunk.
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

import orjson

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


# --- asyncio client --------------------------------------------------------------------------


def _request_bytes(host: str, port: int, body: bytes) -> bytes:
    return (
        f"POST {PATH} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {BENCH_KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, list[tuple[float, bytes]]]:
    """Status and the body's pieces with their arrival times (perf_counter)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    lower = head.lower()
    pieces: list[tuple[float, bytes]] = []
    match = re.search(rb"\r\ncontent-length:\s*(\d+)", lower)
    if match:
        pieces.append((time.perf_counter(), await reader.readexactly(int(match.group(1)))))
    elif b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                break
            pieces.append((time.perf_counter(), data[:-2]))
    else:  # until the connection closes
        pieces.append((time.perf_counter(), await reader.read()))
    return status, pieces


async def _worker(url: tuple[str, int], raw: bytes, deadline: float, out: list[float]) -> int:
    host, port = url
    errors = 0
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            writer.write(raw)
            status, _ = await _read_response(reader)
            if 200 <= status < 300:
                out.append((time.perf_counter() - sent) * 1000.0)
            else:
                errors += 1
    finally:
        writer.close()
    return errors


async def _closed_loop(host: str, port: int, connections: int, seconds: float) -> LoadResult:
    raw = _request_bytes(host, port, CHAT_BODY)
    latencies: list[float] = []
    started = time.perf_counter()
    deadline = started + seconds
    errors = await asyncio.gather(
        *(_worker((host, port), raw, deadline, latencies) for _ in range(connections))
    )
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies) or [float("nan")]
    return LoadResult(
        requests=len(latencies),
        errors=sum(errors),
        seconds=elapsed,
        p50_ms=ordered[len(ordered) // 2],
        p99_ms=ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        tool="python",
    )


def run_python(host: str, port: int, *, connections: int, seconds: float) -> LoadResult:
    return asyncio.run(_closed_loop(host, port, connections, seconds))


async def _streams(host: str, port: int, count: int) -> StreamResult:
    result = StreamResult()
    raw = _request_bytes(host, port, STREAM_BODY)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for _ in range(count):
            sent = time.perf_counter()
            writer.write(raw)
            status, pieces = await _read_response(reader)
            if status != 200 or not pieces:
                result.errors += 1
                continue
            first_at, first = pieces[0]
            received_ns = time.time_ns() - int((time.perf_counter() - first_at) * 1e9)
            result.ttft_ms.append((first_at - sent) * 1000.0)
            stamp = _SENT_NS.search(first)
            if stamp:
                result.hold_ms.append((received_ns - int(stamp.group(1))) / 1e6)
    finally:
        writer.close()
    return result


def run_streams(host: str, port: int, *, count: int) -> StreamResult:
    return asyncio.run(_streams(host, port, count))
