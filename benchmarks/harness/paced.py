"""Paced streams: many SSE streams at once through a proxy, for its CPU per streamed chunk.

The backends behind the proxy (``backend.py --chunks 200 --chunk-interval 0.005``) send each
content chunk a few milliseconds after the last, as an engine sends tokens, so that the proxy
sees them one by one and pays its per-chunk cost (a read, a parse, a write) for every one. A
client that read slower than that would let chunks pile up in the proxy's socket buffers and
the proxy would forward several in one write: cheaper, and not what an engine makes it do. So
this client is a bare ``asyncio.Protocol`` per connection (no HTTP library: it only counts SSE
events and finds the end of the chunked body), and it counts its socket reads: ``coalesced``
is the number of reads that carried two content chunks or more. Near zero means the chunks
arrived one per read, i.e. neither this client nor the proxy batched them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

_DATA = b"data:"
_DONE = b"[DONE]"
_BODY_END = b"\r\n0\r\n\r\n"  # the last chunk of a chunked body


def count_new(window: bytes, tail_len: int, pattern: bytes) -> int:
    """Occurrences of ``pattern`` in ``window`` that end past its first ``tail_len`` bytes
    (the carried-over end of the previous read): none is counted twice."""
    return window.count(pattern, max(0, tail_len - len(pattern) + 1))


@dataclass
class PacedResult:
    """``streams`` finished streams carrying ``chunks`` content chunks in ``seconds``."""

    streams: int = 0
    chunks: int = 0
    reads: int = 0  # socket reads that carried at least one content chunk
    coalesced: int = 0  # of those, reads that carried two or more
    errors: int = 0
    seconds: float = 0.0

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.seconds if self.seconds else 0.0

    def summary(self, cpu_s: float) -> dict[str, float | int | None]:
        per_chunk = cpu_s * 1e6 / self.chunks if self.chunks else None
        return {
            "stream_streams": self.streams,
            "stream_chunks": self.chunks,
            "stream_errors": self.errors,
            "stream_chunks_per_s": round(self.chunks_per_s, 1),
            "stream_coalesced_reads": self.coalesced,
            "stream_chunks_per_read": round(self.chunks / self.reads, 4) if self.reads else None,
            "stream_cpu_s": round(cpu_s, 3),
            "cpu_us_per_chunk": round(per_chunk, 3) if per_chunk is not None else None,
        }


class _Stream(asyncio.Protocol):
    """One keep-alive connection; :meth:`send` starts a stream, ``done`` resolves at its end."""

    def __init__(self, result: PacedResult) -> None:
        self._result = result
        self._transport: asyncio.Transport | None = None
        self._tail = b""
        self._fresh = False  # no byte of the current answer read yet
        self._chunks = 0
        self._ended = False  # [DONE] seen
        self.done: asyncio.Future[bool] | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._finish(False)
        if not self.lost.done():
            self.lost.set_result(None)

    def send(self, request: bytes) -> asyncio.Future[bool]:
        self._tail, self._fresh, self._chunks, self._ended = b"", True, 0, False
        self.done = asyncio.get_running_loop().create_future()
        if self._transport is None:
            self._finish(False)
        else:
            self._transport.write(request)
        return self.done

    def data_received(self, data: bytes) -> None:
        if self._fresh:
            self._fresh = False
            if not data.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
                self._finish(False)
                if self._transport is not None:
                    self._transport.close()
                return
        window, tail_len = self._tail + data, len(self._tail)
        events = count_new(window, tail_len, _DATA)
        done = count_new(window, tail_len, _DONE)
        content = events - done
        if content > 0:
            self._chunks += content
            self._result.reads += 1
            self._result.coalesced += content > 1
        self._ended = self._ended or done > 0
        self._tail = window[-16:]
        if self._ended and self._tail.endswith(_BODY_END):
            self._finish(True)

    def _finish(self, ok: bool) -> None:
        if self.done is None or self.done.done():
            return
        if ok:
            self._result.streams += 1
            self._result.chunks += self._chunks
        else:
            self._result.errors += 1
        self.done.set_result(ok)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def request_bytes(host: str, port: int, path: str, body: bytes, key: str) -> bytes:
    """The streamed chat completion, as this client sends it every time."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {key}\r\nAccept: text/event-stream\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _run(
    host: str, port: int, request: bytes, concurrency: int, seconds: float, timeout: float
) -> PacedResult:
    loop = asyncio.get_running_loop()
    result = PacedResult()
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        conn: _Stream | None = None
        while time.monotonic() < deadline:
            if conn is None or conn.lost.done():
                try:
                    _, conn = await loop.create_connection(lambda: _Stream(result), host, port)
                except OSError:
                    result.errors += 1
                    await asyncio.sleep(0.05)
                    continue
            try:
                ok = await asyncio.wait_for(conn.send(request), timeout)
            except TimeoutError:
                result.errors += 1
                ok = False
            if not ok:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.monotonic() - start
    return result


def run_paced(
    host: str,
    port: int,
    *,
    path: str,
    body: bytes,
    key: str,
    concurrency: int,
    seconds: float,
    timeout: float = 30.0,
) -> PacedResult:
    """``concurrency`` connections, each sending one stream after another until ``seconds``
    have passed (the streams then in flight are read to their end and counted)."""
    import uvloop  # a dependency of llmsvc: the cheapest loop, to keep the client out of the way

    request = request_bytes(host, port, path, body, key)
    return uvloop.run(_run(host, port, request, concurrency, seconds, timeout))
