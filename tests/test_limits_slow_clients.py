"""Slow, huge, truncated and malformed requests meet timeouts and limits, not stuck tasks.

Every HTTP service (router, registry, babysitter, simulated engine) runs as a
real process with ``--read-timeout 1``; raw sockets play the bad clients:

- slowloris: headers one byte at a time, never finished: the server closes the
  connection after the read timeout;
- a body sent slowly (or never): 408 in the OpenAI shape;
- a body whose Content-Length is over the limit: 413 at once, before any of it
  is sent;
- huge headers: 400/431; truncated JSON: 400;
- and afterwards the process holds no more file descriptors than before (no
  connection or task was left behind) and still serves.
"""

from __future__ import annotations

import json
import os
import select
import socket
import time
from pathlib import Path

import httpx
import pytest

from procs import (
    HOST,
    ProcGroup,
    Spawn,
    free_port,
    start_babysitter,
    start_registry,
    start_router,
    wait_until,
)

READ_TIMEOUT = 1.0
# The longest a bad client keeps trying before the test calls the server stuck.
GIVE_UP_S = 20.0


@pytest.fixture(scope="module")
def services(module_spawn: ProcGroup) -> dict[str, tuple[str, int, str]]:
    """name -> (base url, pid, a POST path that reads a JSON body)."""
    timeout = ("--read-timeout", str(READ_TIMEOUT))
    reg, registry = start_registry(module_spawn, *timeout)
    sitter_proc, _, sitter = start_babysitter(
        module_spawn, registry, "slow-engine", *timeout, engine_args=("--time-scale", "0")
    )
    router_proc, router = start_router(module_spawn, registry, *timeout)
    port = free_port()
    engine_proc = module_spawn(
        "sim-engine", "sim-engine", "--port", str(port), "--model", "sim-model", *timeout
    )
    engine = f"http://{HOST}:{port}"
    engine_proc.wait_http(f"{engine}/health")
    return {
        "registry": (registry, reg.pid, "/services"),
        "router": (router, router_proc.pid, "/v1/chat/completions"),
        "engine": (engine, engine_proc.pid, "/v1/chat/completions"),
        "babysitter": (sitter, sitter_proc.pid, "/model"),
    }


SERVICES = ["registry", "router", "engine", "babysitter"]


def _connect(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=GIVE_UP_S)
    return sock


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one HTTP/1.1 response (Content-Length framed)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def _closed_by_peer(sock: socket.socket) -> bool:
    """True once the server has closed (EOF or reset); False while it is still open."""
    sock.settimeout(0.05)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _assert_openai_error(body: bytes, status: int) -> None:
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["message"], (status, error)


def _still_serves(base: str) -> None:
    assert httpx.get(base + "/health", timeout=10).status_code == 200


@pytest.mark.parametrize("name", SERVICES)
def test_slowloris_headers_are_cut_off(
    services: dict[str, tuple[str, int, str]], name: str
) -> None:
    base, pid, _ = services[name]
    baseline = _fds(pid)
    socks = [_connect(base) for _ in range(20)]
    for sock in socks:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    open_socks = list(socks)
    while open_socks and time.monotonic() - started < GIVE_UP_S:
        for sock in list(open_socks):
            if _closed_by_peer(sock):
                open_socks.remove(sock)
                continue
            try:
                sock.sendall(b"X")  # one more byte of a header that never ends
            except OSError:
                open_socks.remove(sock)
        # A well-behaved client is served meanwhile.
        _still_serves(base)
        time.sleep(0.3)
    elapsed = time.monotonic() - started
    for sock in socks:
        sock.close()
    assert not open_socks, f"{len(open_socks)} slowloris connections still open after {elapsed}s"
    wait_until(lambda: _fds(pid) <= baseline, timeout=10, what=f"{name} fds back to {baseline}")


@pytest.mark.parametrize("name", SERVICES)
def test_a_slow_body_gets_408(services: dict[str, tuple[str, int, str]], name: str) -> None:
    base, pid, path = services[name]
    baseline = _fds(pid)
    with _connect(base) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 1000\r\n\r\n".encode()
            + b'{"model": "sim-model", '
        )
        started = time.monotonic()
        status, headers, body = _read_response(sock)
        assert time.monotonic() - started < GIVE_UP_S
    assert status == 408, body
    assert headers.get("connection", "").lower() == "close", headers
    _assert_openai_error(body, status)
    assert json.loads(body)["error"]["code"] == "request_timeout"
    _still_serves(base)
    wait_until(lambda: _fds(pid) <= baseline, timeout=10, what=f"{name} fds back to {baseline}")


@pytest.mark.parametrize("name", SERVICES)
def test_an_announced_huge_body_gets_413_before_it_is_sent(
    services: dict[str, tuple[str, int, str]], name: str
) -> None:
    base, _, path = services[name]
    with _connect(base) as sock:
        # Only the headers: a server that waited for the body would time out (408) instead.
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {10**12}\r\n\r\n".encode()
        )
        status, _, body = _read_response(sock)
    # 413, not 408: the server answered without waiting for the body.
    assert status == 413, body
    _assert_openai_error(body, status)
    _still_serves(base)


@pytest.mark.parametrize("name", SERVICES)
def test_a_chunked_huge_body_is_cut_at_the_limit(
    services: dict[str, tuple[str, int, str]], name: str
) -> None:
    base, _, path = services[name]
    chunk = b"x" * 65536
    frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    sent = 0
    with _connect(base) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        # Send until the server answers: it must not wait for the end of an endless body.
        while sent < 1 << 30:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(frame)
            except OSError:
                break  # closed on us: the answer is in the receive buffer
            sent += len(chunk)
        sock.settimeout(GIVE_UP_S)
        status, _, body = _read_response(sock)
    assert status == 413, body
    _assert_openai_error(body, 413)
    assert sent < 256 << 20, f"sent {sent} bytes before the 413"
    _still_serves(base)


@pytest.mark.parametrize("name", SERVICES)
def test_huge_headers_are_refused(services: dict[str, tuple[str, int, str]], name: str) -> None:
    base, _, _ = services[name]
    resp = httpx.get(base + "/health", headers={"X-Big": "y" * 100_000}, timeout=30)
    assert resp.status_code == 400, resp.text[:300]  # docs/security.md
    _assert_openai_error(resp.content, resp.status_code)
    assert "yyyy" not in resp.text, "the error echoes the request's bytes"
    many = {f"X-H{i}": "v" for i in range(500)}
    resp = httpx.get(base + "/health", headers=many, timeout=30)
    assert resp.status_code == 400, resp.text[:300]  # docs/security.md
    _assert_openai_error(resp.content, resp.status_code)
    _still_serves(base)


@pytest.mark.parametrize("name", SERVICES)
def test_a_malformed_request_line_gets_the_openai_shape(
    services: dict[str, tuple[str, int, str]], name: str
) -> None:
    base, _, _ = services[name]
    with _connect(base) as sock:
        sock.sendall(b"GET /health HTTP/1.1 garbage\r\nHost: x\r\n\r\n")
        status, headers, body = _read_response(sock)
    assert status == 400, body[:300]
    assert headers.get("content-type", "").startswith("application/json"), headers
    _assert_openai_error(body, status)


@pytest.mark.parametrize("name", SERVICES)
def test_truncated_json_is_a_400(services: dict[str, tuple[str, int, str]], name: str) -> None:
    base, _, path = services[name]
    body = b'{"model": "sim-model", "messages": [{"role": "user", "content": "hel'
    resp = httpx.post(base + path, content=body, timeout=30)
    assert resp.status_code == 400, resp.text[:300]
    _assert_openai_error(resp.content, 400)
    _still_serves(base)


def test_the_read_timeout_is_a_flag_with_a_clear_error(spawn: Spawn, tmp_path: Path) -> None:
    proc = spawn("bad-timeout", "registry", "--port", str(free_port()), "--read-timeout", "0")
    assert proc.popen.wait(30) == 2
    log = proc.log()
    assert "--read-timeout" in log and "Traceback" not in log
