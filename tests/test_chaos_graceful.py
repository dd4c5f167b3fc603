"""Behaviour 4 of docs/reliability.md: graceful stops and a rolling restart of the router.

On SIGTERM the router closes its listener at once, answers what still comes on open
connections (with ``Connection: close``), lets every open stream finish, and exits 0; two
routers sharing one port (``--reuse-port``) are restarted one after the other under steady
load, and no request is lost.
"""

from __future__ import annotations

import asyncio
import http.client
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import orjson
from benchmarks.chaos.scenarios import HEADERS, Request, logged_request, stream_flags

from llmsvc.bench.schedule import Schedule, drive
from procs import HOST, Proc, Spawn, free_port
from procs import wait_until as wait

BACKEND = Path(__file__).resolve().parents[1] / "benchmarks" / "common" / "backend.py"

STREAM = {"model": "bench-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}
MIGRATE = Path("/proc/sys/net/ipv4/tcp_migrate_req")


def _backends(spawn: Spawn, tmp_path: Path, chunks: int) -> Path:
    records = []
    for i in range(2):
        port = free_port()
        proc = spawn(
            f"b{i}", sys.executable, str(BACKEND), "--port", str(port), "--name", f"b{i}",
            *stream_flags(chunks), raw=True,
        )  # fmt: skip
        proc.wait_http(f"http://{HOST}:{port}/health")
        records.append(
            {"name": f"b{i}", "host": HOST, "port": port, "metadata": {"models": ["bench-model"]}}
        )
    static = tmp_path / "services.json"
    static.write_bytes(orjson.dumps({"services": records}))
    return static


def _router(spawn: Spawn, name: str, port: int, static: Path) -> Proc:
    proc: Proc = spawn(
        name, "router", "--port", str(port), "--static-services", str(static), "--reuse-port",
        "--log-level", "info",
    )  # fmt: skip
    # Ready, not only listening: /health answers 503 until the static services are checked.
    # Its own log, not wait_http: routers here share the port, a probe may reach another.
    wait(lambda: "ready: " in proc.log(), timeout=20, what=f"{name} ready")
    return proc


def test_sigterm_finishes_open_streams_and_stops_accepting(spawn: Spawn, tmp_path: Path) -> None:
    static = _backends(spawn, tmp_path, chunks=60)  # streams of 3 s
    port = free_port()
    router = _router(spawn, "router", port, static)
    url = f"http://{HOST}:{port}/v1/chat/completions"
    bodies: list[str] = []
    started = threading.Semaphore(0)

    def stream() -> None:
        with httpx.stream("POST", url, json=STREAM, timeout=30) as resp:
            chunks = resp.iter_text()
            text = next(chunks)
            started.release()
            bodies.append(text + "".join(chunks))

    threads = [threading.Thread(target=stream) for _ in range(3)]
    for t in threads:
        t.start()
    for _ in threads:
        assert started.acquire(timeout=20)
    router.signal(signal.SIGTERM)
    # The listener closes at once: a new connection is refused while the streams go on.
    wait(lambda: _refused(port), timeout=2.0, what="listener closed")
    assert router.alive()
    for t in threads:
        t.join(30)
    assert len(bodies) == 3
    assert all(b.rstrip().endswith("data: [DONE]") and '"error"' not in b for b in bodies), bodies
    assert router.popen.wait(10) == 0


def test_sigterm_serves_an_idle_keep_alive_connection_once_more(
    spawn: Spawn, tmp_path: Path
) -> None:
    # Closing it at once would lose a request the client sends on it just then; the
    # router answers it, with Connection: close, so the client moves on without a loss.
    static = _backends(spawn, tmp_path, chunks=10)
    port = free_port()
    router = _router(spawn, "router", port, static)
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    conn.request("GET", "/health")
    first = conn.getresponse()
    first.read()
    assert first.status == 200 and first.getheader("Connection") != "close"
    router.signal(signal.SIGTERM)
    wait(lambda: "stopping: listener closed" in router.log(), timeout=5, what="router draining")
    conn.request("GET", "/health")
    second = conn.getresponse()
    assert second.status == 200
    assert second.getheader("Connection") == "close"
    second.read()
    assert router.popen.wait(10) == 0


def _refused(port: int) -> bool:
    try:
        httpx.get(f"http://{HOST}:{port}/health", timeout=0.5)
    except httpx.ConnectError:
        return True
    except httpx.HTTPError:
        return False
    return False


def test_rolling_restart_of_two_routers_loses_no_request(spawn: Spawn, tmp_path: Path) -> None:
    static = _backends(spawn, tmp_path, chunks=10)  # streams of 0.5 s
    port = free_port()
    routers = [_router(spawn, f"router-{i}", port, static) for i in range(2)]
    results, restarted = asyncio.run(_load_during_rolling_restart(spawn, port, static, routers))
    assert all(code == 0 for code in restarted), restarted
    lost = [r for r in results if r.outcome != "ok"]
    streams = sum(r.stream for r in results)
    assert len(results) > 300 and streams > 10, (len(results), streams)
    # Without tcp_migrate_req the kernel resets connections still queued on the closing
    # listener (docs/reliability.md): at most a stray one per restart, never silently.
    allowed = 0 if MIGRATE.exists() and MIGRATE.read_text().strip() == "1" else 2
    assert len(lost) <= allowed, [(r.stream, r.status, r.error) for r in lost]


async def _load_during_rolling_restart(
    spawn: Spawn,
    port: int,
    static: Path,
    routers: list[Proc],
) -> tuple[list[Request], list[int | None]]:
    import aiohttp

    url = f"http://{HOST}:{port}/v1/chat/completions"
    results: list[Request] = []
    done = asyncio.Event()

    codes: list[int | None] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, headers=HEADERS) as session:

        async def stream(n: int) -> Request:
            return await logged_request(session, url, stream=True)

        async def chat(n: int) -> Request:
            return await logged_request(session, url, stream=False)

        def load(send: Callable[[int], Awaitable[Request]], clients: int) -> Awaitable[object]:
            schedule = Schedule(concurrency=clients, pause=0.005)
            return drive(schedule, send, on_result=results.append, drain=done)

        tasks = [asyncio.ensure_future(load(stream, 3)), asyncio.ensure_future(load(chat, 7))]
        await _answered(results, 100)
        for i, old in enumerate(routers):
            await asyncio.to_thread(_router, spawn, f"router-{i}-new", port, static)
            started = time.monotonic()
            codes.append(await asyncio.to_thread(old.stop, 20))
            assert time.monotonic() - started < 10
            await _answered(results, len(results) + 50)  # the new one serves
        done.set()
        await asyncio.gather(*tasks)
    return results, codes


async def _answered(results: list[Request], count: int, timeout: float = 20.0) -> None:
    """Wait until ``count`` requests of the load have been answered."""
    deadline = time.monotonic() + timeout
    while len(results) < count:
        assert time.monotonic() < deadline, f"{len(results)} answered, not {count}"
        await asyncio.sleep(0.01)


def test_bad_shutdown_timeout_one_line(spawn: Spawn) -> None:
    proc = spawn("router", "router", "--port", str(free_port()), "--shutdown-timeout", "-1")
    assert proc.popen.wait(20) == 2
    assert "shutdown-timeout" in proc.log()
    assert "Traceback" not in proc.log()
