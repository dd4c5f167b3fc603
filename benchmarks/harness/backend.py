"""A minimal fixed-answer OpenAI backend for proxy benchmarks: raw asyncio, no framework.

It answers at once, so that what a benchmark measures is the proxy in front
of it, not an engine: ``POST .../chat/completions`` (and ``/completions``) with
a fixed chat completion, or, when the body asks for ``"stream": true``, a
Server-Sent Events stream whose first chunk is sent ``--first-chunk-delay``
seconds after the headers and carries its send time (``time.time_ns()``), so
a client on the same machine can tell how long a proxy held that chunk.
``GET /health`` and ``GET /v1/models`` answer too. HTTP/1.1 keep-alive,
``Content-Length`` request bodies only (what every proxy here sends).

    python benchmarks/harness/backend.py --port 9001 --name b1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import time
import typing

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
_STREAM_TRUE = re.compile(rb'"stream"\s*:\s*true')
STREAM_CHUNKS = 4  # content chunks after the first one, then [DONE]


def _response(status: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 " + status.encode() + b"\r\nContent-Type: " + content_type
        + b"\r\nContent-Length: " + str(len(body)).encode()
        + b"\r\nConnection: keep-alive\r\n\r\n" + body
    )  # fmt: skip


def _chat_body(name: str) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 0,
            "model": "bench-model",
            "system_fingerprint": name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello from the benchmark."},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 8, "completion_tokens": 6, "total_tokens": 14},
        },
        separators=(",", ":"),
    ).encode()


def _sse_chunk(data: bytes) -> bytes:
    frame = b"data: " + data + b"\n\n"
    return b"%x\r\n" % len(frame) + frame + b"\r\n"


def _delta(text: str, sent_ns: int | None = None) -> bytes:
    chunk: dict[str, object] = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "model": "bench-model",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }
    if sent_ns is not None:
        chunk["sent_ns"] = sent_ns
    return json.dumps(chunk, separators=(",", ":")).encode()


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
)


class BenchBackend(asyncio.Protocol):
    def __init__(self, name: str, first_chunk_delay: float) -> None:
        self._name = name
        self._delay = first_chunk_delay
        self._chat = _response("200 OK", _chat_body(name))
        self._health = _response("200 OK", b'{"status":"ok"}')
        models = {"object": "list", "data": [{"id": "bench-model", "object": "model"}]}
        self._models = _response("200 OK", json.dumps(models).encode())
        self._missing = _response("404 Not Found", b'{"error":{"message":"not found"}}')
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = typing.cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self._buffer[: end + 2]
            match = _CONTENT_LENGTH.search(head)
            size = int(match.group(1)) if match else 0
            total = end + 4 + size
            if len(self._buffer) < total:
                return
            body = self._buffer[end + 4 : total]
            self._buffer = self._buffer[total:]
            self._answer(head, body)

    def _answer(self, head: bytes, body: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        line = head[: head.find(b"\r\n")]
        if line.startswith(b"POST ") and b"completions" in line:
            if _STREAM_TRUE.search(body):
                self._stream(transport)
            else:
                transport.write(self._chat)
        elif line.startswith(b"GET /health"):
            transport.write(self._health)
        elif line.startswith(b"GET ") and b"/models" in line:
            transport.write(self._models)
        else:
            transport.write(self._missing)

    def _stream(self, transport: asyncio.Transport) -> None:
        transport.write(STREAM_HEAD)
        loop = asyncio.get_running_loop()
        loop.call_later(self._delay, self._stream_rest, transport)

    def _stream_rest(self, transport: asyncio.Transport) -> None:
        if transport.is_closing():
            return
        transport.write(_sse_chunk(_delta("Hello", time.time_ns())))
        rest = b"".join(_sse_chunk(_delta(f" word{i}")) for i in range(STREAM_CHUNKS))
        transport.write(rest + _sse_chunk(b"[DONE]") + b"0\r\n\r\n")


async def serve(host: str, port: int, name: str, first_chunk_delay: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: BenchBackend(name, first_chunk_delay), host, port, backlog=1024
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="bench")
    parser.add_argument("--first-chunk-delay", type=float, default=0.02)
    args = parser.parse_args()
    import uvloop  # a dependency of llmsvc

    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args.host, args.port, args.name, args.first_chunk_delay))


if __name__ == "__main__":
    main()
