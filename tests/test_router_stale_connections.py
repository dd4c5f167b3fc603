"""A kept-alive upstream connection the backend closed is not a failed request.

llama-server closes a connection right after a stream; a router that pooled it finds
out only when it sends the next request there and the backend closes without a byte of
answer (aiohttp's ``ServerDisconnectedError``), or, when the close crossed the request,
with a reset (``ClientOSError``, ECONNRESET: a real llama-server's test once got a 502 so).
The router sends that request again at once on another connection
(``proxy.STALE_RETRIES``) instead of answering 502 when the model has one backend. The
stand-in here answers the first POST of every connection and closes or resets the
connection on the next one, as such a backend does.
"""

from __future__ import annotations

import json
import socket
import socketserver
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from procs import Spawn, start_router

ANSWER = json.dumps(
    {
        "id": "x",
        "object": "chat.completion",
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
).encode()


class _ClosesReusedConnections(socketserver.StreamRequestHandler):
    """Answers GETs always, a connection's first POST, and closes on its second POST
    (resets it where the server's ``reset`` is set)."""

    def handle(self) -> None:
        posts = 0
        while True:
            line = self.rfile.readline()
            if not line:
                return
            method = line.split(b" ", 1)[0]
            length = 0
            while (header := self.rfile.readline()) not in (b"\r\n", b""):
                name, _, value = header.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            self.rfile.read(length)
            if method == b"POST":
                posts += 1
                if posts > 1:  # without a byte of answer: a stale kept-alive connection
                    if isinstance(self.server, _Server) and self.server.reset:  # RST, not FIN
                        linger = struct.pack("ii", 1, 0)
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                        self.connection.close()  # now: socketserver would send a FIN first
                    return
            body = ANSWER if method == b"POST" else b'{"status": "ok"}'
            head = (
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
            )
            self.wfile.write(head + body)
            self.wfile.flush()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    reset = False  # reused connections end with a reset, not a close


@pytest.fixture(params=["close", "reset"])
def closing_backend(request: pytest.FixtureRequest) -> Iterator[int]:
    server = _Server(("127.0.0.1", 0), _ClosesReusedConnections)
    server.reset = request.param == "reset"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_a_connection_the_backend_closed_is_sent_again_not_a_502(
    spawn: Spawn, tmp_path: Path, closing_backend: int
) -> None:
    services = tmp_path / "services.json"
    record = {"name": "one", "host": "127.0.0.1", "port": closing_backend}
    services.write_text(json.dumps([{**record, "metadata": {"models": ["m"]}}]))
    _, url = start_router(spawn, None, "--static-services", str(services))
    body = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
    with httpx.Client(timeout=10) as client:
        statuses = [
            client.post(f"{url}/v1/chat/completions", json=body).status_code for _ in range(6)
        ]
    assert statuses == [200] * 6  # one backend: before the fix the reused connections were 502
