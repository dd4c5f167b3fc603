"""Many cheap OpenAI backends in one process: one raw-asyncio listener per port.

The scale study registers a thousand backends; a thousand simulated engines
are far too many processes for a small machine, so this one process listens
on ``--count`` ports (each chosen by the kernel) and answers on every one of
them, at once and with a fixed body:

- ``GET /health``: 200 ``{"status": "ok"}``
- ``GET /v1/models``: the model ``--model``
- ``GET /metrics``: vLLM's load gauges, all zero (what ``least_load`` scrapes)
- ``POST /v1/chat/completions`` and ``/v1/completions``: a fixed, small
  completion with ``usage`` (whatever model was asked for), never streamed

HTTP/1.1 keep-alive, ``Content-Length`` bodies only. When every port listens
it prints one JSON line, ``{"ports": [...]}``, and runs until SIGTERM/SIGINT.

    python benchmarks/scale/listener.py --count 1000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
import typing

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
_MAX_HEADER = 64 * 1024


def _response(status: bytes, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\nContent-Type: " + content_type + b"\r\nContent-Length: "
        + str(len(body)).encode() + b"\r\nConnection: keep-alive\r\n\r\n" + body
    )  # fmt: skip


def _answers(model: str) -> dict[tuple[bytes, bytes], bytes]:
    completion = {
        "id": "chatcmpl-scale",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 8, "completion_tokens": 1, "total_tokens": 9},
    }
    models = {"object": "list", "data": [{"id": model, "object": "model", "owned_by": "scale"}]}
    ok = _response(b"200 OK", json.dumps(completion).encode())
    metrics = (
        b"vllm:num_requests_running 0\nvllm:num_requests_waiting 0\nvllm:kv_cache_usage_perc 0\n"
    )
    return {
        (b"GET", b"/health"): _response(b"200 OK", b'{"status":"ok"}'),
        (b"GET", b"/v1/models"): _response(b"200 OK", json.dumps(models).encode()),
        (b"GET", b"/metrics"): _response(b"200 OK", metrics, b"text/plain; version=0.0.4"),
        (b"POST", b"/v1/chat/completions"): ok,
        (b"POST", b"/v1/completions"): ok,
    }


_NOT_FOUND = _response(
    b"404 Not Found",
    b'{"error":{"message":"not found","type":"not_found","param":null,"code":null}}',
)


class Backend(asyncio.Protocol):
    """One connection: split requests, answer each from the fixed table."""

    def __init__(self, answers: dict[tuple[bytes, bytes], bytes]) -> None:
        self.answers = answers
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > _MAX_HEADER:
                    self.transport.close()
                return
            match = _CONTENT_LENGTH.search(self.buffer, 0, end + 2)
            total = end + 4 + (int(match.group(1)) if match else 0)
            if len(self.buffer) < total:
                return
            request_line = self.buffer[: self.buffer.find(b"\r\n")].split(b" ")
            self.buffer = self.buffer[total:]
            method, path = request_line[0], request_line[1].split(b"?")[0]
            self.transport.write(self.answers.get((method, path), _NOT_FOUND))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(count: int, host: str, model: str) -> None:
    loop = asyncio.get_running_loop()
    answers = _answers(model)
    servers = [
        await loop.create_server(lambda: Backend(answers), host, 0, backlog=1024)
        for _ in range(count)
    ]
    ports = [server.sockets[0].getsockname()[1] for server in servers]
    sys.stdout.write(json.dumps({"ports": ports}) + "\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="ports to listen on")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--model", default="scale-model", help="the id /v1/models lists")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(serve(args.count, args.host, args.model))
    except ImportError:
        asyncio.run(serve(args.count, args.host, args.model))


if __name__ == "__main__":
    main()
