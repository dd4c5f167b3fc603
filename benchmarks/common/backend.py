"""The harnesses' stand-in OpenAI backend: fixed answers on raw asyncio, no framework.

It answers at once, so that what a harness measures is the proxy in front of
it, not an engine:

- ``POST .../chat/completions`` (and ``/completions``): a fixed chat completion
  with ``usage``, or, when the body asks for ``"stream": true``, a Server-Sent
  Events stream: the first chunk ``--first-chunk-delay`` seconds after the
  headers, carrying its send time (``sent_ns``, ``time.time_ns()``) so that a
  client on the same machine can tell how long a proxy held it, then the other
  chunks ``--chunk-interval`` seconds apart (``0``: at once), then ``[DONE]``;
- ``GET /health``, ``GET /v1/models`` (the model ``--model``) and ``GET /metrics``
  (vLLM's load gauges, all zero, what ``least_load`` scrapes).

Every answer names the backend (``system_fingerprint``, in every chunk too), so
that a request log says which backend served each request, through any proxy.
HTTP/1.1 keep-alive, ``Content-Length`` request bodies only (what every proxy
here sends). It listens on ``--port``, or on ``--count`` ports the kernel chooses
(the scale study's thousand backends in one process: it prints one JSON line,
``{"ports": [...]}``, once all listen), and runs until SIGTERM or SIGINT.

Faults are done to the process from outside (the fault harness): SIGKILL
(death: the port refuses connections), SIGSTOP (black hole: the kernel still
accepts connections into the listen backlog, nothing answers, streams stall),
SIGCONT.

    python benchmarks/common/backend.py --port 9001 --name b1            # make bench
    python benchmarks/common/backend.py --port 9001 --name b1 --chunks 20 \\
        --first-chunk-delay 0.05 --chunk-interval 0.05                   # make chaos
    python benchmarks/common/backend.py --count 1000 --model scale-model # make scale
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
import time
import typing
from dataclasses import dataclass

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
_STREAM_TRUE = re.compile(rb'"stream"\s*:\s*true')
_MAX_HEADER = 64 * 1024
_JSON = b"application/json"
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
)
_STREAM_END = b"%x\r\ndata: [DONE]\n\n\r\n0\r\n\r\n" % len(b"data: [DONE]\n\n")
_METRICS = b"vllm:num_requests_running 0\nvllm:num_requests_waiting 0\nvllm:kv_cache_usage_perc 0\n"


@dataclass(frozen=True, slots=True, kw_only=True)
class Shape:
    """What the backend answers: who it says it is, and how a stream is paced (seconds)."""

    name: str = "bench"
    model: str = "bench-model"
    chunks: int = 5  # content chunks of a stream, the first one included
    first_chunk_delay: float = 0.02
    chunk_interval: float = 0.0


def _response(status: bytes, body: bytes, content_type: bytes = _JSON) -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\nContent-Type: " + content_type + b"\r\nContent-Length: "
        + str(len(body)).encode() + b"\r\nConnection: keep-alive\r\n\r\n" + body
    )  # fmt: skip


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _chat_body(shape: Shape) -> bytes:
    return _json(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 0,
            "model": shape.model,
            "system_fingerprint": shape.name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello from the benchmark."},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 8, "completion_tokens": 6, "total_tokens": 14},
        }
    )


def _sse_chunk(shape: Shape, text: str, sent_ns: int | None = None) -> bytes:
    """One content chunk as an SSE event in one HTTP chunk."""
    chunk: dict[str, object] = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "model": shape.model,
        "system_fingerprint": shape.name,
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }
    if sent_ns is not None:
        chunk["sent_ns"] = sent_ns
    frame = b"data: " + _json(chunk) + b"\n\n"
    return b"%x\r\n" % len(frame) + frame + b"\r\n"


class Answers:
    """Every answer but a stream's first chunk, encoded once."""

    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        self.chat = _response(b"200 OK", _chat_body(shape))
        self.health = _response(b"200 OK", b'{"status":"ok"}')
        models = {"object": "list", "data": [{"id": shape.model, "object": "model"}]}
        self.models = _response(b"200 OK", _json(models))
        self.metrics = _response(b"200 OK", _METRICS, b"text/plain; version=0.0.4")
        self.missing = _response(
            b"404 Not Found",
            b'{"error":{"message":"not found","type":"not_found","param":null,"code":null}}',
        )
        self.rest = [_sse_chunk(shape, f" word{i}") for i in range(shape.chunks - 1)]

    def first_chunk(self) -> bytes:
        return _sse_chunk(self.shape, "Hello", time.time_ns())


class Backend(asyncio.Protocol):
    """One connection: split the requests, answer each."""

    def __init__(self, answers: Answers) -> None:
        self._answers = answers
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = typing.cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while self._transport is not None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > _MAX_HEADER:
                    self._transport.close()
                return
            match = _CONTENT_LENGTH.search(self._buffer, 0, end + 2)
            total = end + 4 + (int(match.group(1)) if match else 0)
            if len(self._buffer) < total:
                return
            line = self._buffer[: self._buffer.find(b"\r\n")]
            body = self._buffer[end + 4 : total]
            self._buffer = self._buffer[total:]
            self._answer(self._transport, line, body)

    def _answer(self, transport: asyncio.Transport, line: bytes, body: bytes) -> None:
        answers = self._answers
        if line.startswith(b"POST ") and b"completions" in line:
            if _STREAM_TRUE.search(body):
                transport.write(STREAM_HEAD)
                asyncio.get_running_loop().create_task(self._stream(transport))
            else:
                transport.write(answers.chat)
        elif line.startswith(b"GET /health"):
            transport.write(answers.health)
        elif line.startswith(b"GET /metrics"):
            transport.write(answers.metrics)
        elif line.startswith(b"GET ") and b"/models" in line:
            transport.write(answers.models)
        else:
            transport.write(answers.missing)

    async def _stream(self, transport: asyncio.Transport) -> None:
        shape = self._answers.shape
        await asyncio.sleep(shape.first_chunk_delay)
        if transport.is_closing():
            return
        if not shape.chunk_interval:
            transport.write(self._answers.first_chunk() + b"".join(self._answers.rest))
        else:
            transport.write(self._answers.first_chunk())
            for frame in self._answers.rest:
                await asyncio.sleep(shape.chunk_interval)
                if transport.is_closing():
                    return
                transport.write(frame)
        transport.write(_STREAM_END)


async def serve(host: str, ports: list[int], shape: Shape) -> None:
    """Listen on each of ``ports`` (0: one the kernel chooses) until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    answers = Answers(shape)
    servers = [
        await loop.create_server(lambda: Backend(answers), host, port, backlog=1024)
        for port in ports
    ]
    if ports == [0] * len(ports):
        chosen = [server.sockets[0].getsockname()[1] for server in servers]
        sys.stdout.write(json.dumps({"ports": chosen}) + "\n")
        sys.stdout.flush()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", type=int, help="the port to listen on")
    where.add_argument("--count", type=int, help="listen on this many ports the kernel chooses")
    parser.add_argument("--name", default="bench", help="system_fingerprint of every answer")
    parser.add_argument("--model", default="bench-model", help="the model id it answers as")
    parser.add_argument("--chunks", type=int, default=5, help="content chunks of a stream")
    parser.add_argument("--first-chunk-delay", type=float, default=0.02, help="seconds")
    parser.add_argument("--chunk-interval", type=float, default=0.0, help="seconds")
    args = parser.parse_args()
    shape = Shape(
        name=args.name,
        model=args.model,
        chunks=max(1, args.chunks),
        first_chunk_delay=args.first_chunk_delay,
        chunk_interval=args.chunk_interval,
    )
    ports = [args.port] if args.port is not None else [0] * args.count
    import uvloop  # a dependency of llmsvc

    uvloop.run(serve(args.host, ports, shape))


if __name__ == "__main__":
    main()
