"""The fault harness's backend: the proxy benchmark's fixed-answer backend with long streams.

``benchmarks/harness/backend.py`` answers a chat completion at once; this
subclass keeps that and makes a stream last (``--chunks`` chunks,
``--chunk-interval`` seconds apart, then ``[DONE]``), so that streams are in
flight when the harness kills or freezes the process. Every answer names the
backend (``system_fingerprint``, in every chunk too), so that the harness's
request log says which backend served each request, through any proxy.

Faults are done to the process from outside: SIGKILL (death: the port
refuses connections), SIGSTOP (black hole: the kernel still accepts
connections into the listen backlog, nothing answers, streams stall), SIGCONT.

    python benchmarks/chaos/faultbackend.py --port 9001 --name b0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "harness"))

from backend import STREAM_HEAD, BenchBackend, _sse_chunk


def _chunk(name: str, text: str) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-chaos",
            "object": "chat.completion.chunk",
            "model": "bench-model",
            "system_fingerprint": name,
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
        },
        separators=(",", ":"),
    ).encode()


class FaultBackend(BenchBackend):
    def __init__(self, name: str, chunks: int, interval: float) -> None:
        super().__init__(name, first_chunk_delay=interval)
        self._frames = [_sse_chunk(_chunk(name, f" w{i}")) for i in range(chunks)]
        self._interval = interval

    def _stream(self, transport: asyncio.Transport) -> None:
        transport.write(STREAM_HEAD)
        asyncio.get_running_loop().create_task(self._drip(transport))

    async def _drip(self, transport: asyncio.Transport) -> None:
        for frame in self._frames:
            await asyncio.sleep(self._interval)
            if transport.is_closing():
                return
            transport.write(frame)
        transport.write(_sse_chunk(b"[DONE]") + b"0\r\n\r\n")


async def serve(host: str, port: int, name: str, chunks: int, interval: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: FaultBackend(name, chunks, interval), host, port, backlog=1024
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="b0")
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--chunk-interval", type=float, default=0.05)
    args = parser.parse_args()
    import uvloop  # a dependency of llmsvc

    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args.host, args.port, args.name, args.chunks, args.chunk_interval))


if __name__ == "__main__":
    main()
