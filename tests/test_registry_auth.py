"""The registry is authenticated by default (issue 11, items 1, 5 and 6).

Without a write token it does not start unless told ``--allow-anonymous-writes``
(and then warns); with one, reads need it too (records say where every engine
is), and so does the check on demand (it makes the registry connect out);
``/health`` and ``/metrics`` (counts, no addresses) stay open.
"""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from procs import HOST, Spawn, free_port, llmsvc_args, start_registry
from registryapp import MakeClient, assert_error, registry_client, service

TOKEN = "write-t0ken-for-tests"
ADMIN = "admin-t0ken-for-tests"
WRITE = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def make_client(aiohttp_client: Any) -> MakeClient:
    return functools.partial(registry_client, aiohttp_client)


def run_registry(*args: str) -> subprocess.CompletedProcess[str]:
    """``llmsvc registry`` with ``args`` and no token from the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMSVC_")}
    return subprocess.run(
        llmsvc_args("registry", "--port", str(free_port()), *args),
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )


# -- starting ----------------------------------------------------------------------


def test_without_a_write_token_it_does_not_start() -> None:
    done = run_registry()
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "llmsvc registry: error: no write token: give --token or --token-file "
        "(LLMSVC_TOKEN), or --allow-anonymous-writes to let anyone write"
    ]


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (("--token", "a", "--allow-anonymous-writes"), "not both"),
        (("--token", "a", "--token-file", "/dev/null"), "give --token or --token-file"),
        (("--token-file", "/nonexistent/token"), "--token-file /nonexistent/token"),
        (("--token", "same", "--admin-token", "same"), "--admin-token must differ"),
        (("--token", "a", "--admin-token-file", "/dev/null"), "--admin-token-file /dev/null"),
    ],
)
def test_token_settings_errors_are_one_line(args: tuple[str, ...], problem: str) -> None:
    done = run_registry(*args)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert problem in line, line
    assert "Traceback" not in done.stderr


def test_anonymous_mode_warns_at_start(spawn: Spawn) -> None:
    port = free_port()
    proc, url = start_registry(spawn, port=port)  # --allow-anonymous-writes
    assert (
        "registry writes need no token (--allow-anonymous-writes): anyone who can reach "
        f"port {port} can register, replace and remove services"
    ) in proc.log()
    assert httpx.get(f"{url}/services").status_code == 200


def test_tokens_from_files_are_never_logged(spawn: Spawn, tmp_path: Path) -> None:
    (tmp_path / "registry-token").write_text(TOKEN + "\n")
    (tmp_path / "registry-admin-token").write_text(ADMIN + "\n")
    proc, url = start_registry(
        spawn,
        "--token-file",
        str(tmp_path / "registry-token"),
        "--admin-token-file",
        str(tmp_path / "registry-admin-token"),
        "--log-level",
        "debug",
    )
    assert httpx.get(f"{url}/services").status_code == 401
    assert httpx.get(f"{url}/services", headers=WRITE).status_code == 200
    admin = {"Authorization": f"Bearer {ADMIN}"}
    assert httpx.get(f"{url}/stats", headers=admin).status_code == 200
    assert "writes need no token" not in proc.log()
    health = httpx.get(f"{url}/health").text
    for secret in (TOKEN, ADMIN):
        assert secret not in proc.log() and secret not in health


# -- what the token guards ----------------------------------------------------------


async def test_reads_need_the_token_and_leak_nothing(make_client: MakeClient) -> None:
    client = await make_client(token=TOKEN)
    secret_place = service(host="10.9.8.7", port=4321, metadata={"models": ["m"]})
    assert (await client.post("/services", json=secret_place, headers=WRITE)).status == 201
    for path in (
        "/services",
        "/services?model=m",
        "/services?index=0&wait=10s",  # a blocking query is refused at once, not held
        "/services/engine-a",
        "/stats",
    ):
        resp = await client.get(path)
        error = await assert_error(resp, 401)
        assert error["code"] == "invalid_token"
        assert resp.headers["WWW-Authenticate"] == "Bearer"
        text = await resp.text()
        assert "10.9.8.7" not in text and "4321" not in text and "engine-a" not in text
    listed = await (await client.get("/services", headers=WRITE)).json()
    assert listed["services"][0]["url"] == "http://10.9.8.7:4321"
    # Open: the registry's health and its metrics, which hold counts and no addresses.
    for path in ("/health", "/metrics", "/openapi.json"):
        resp = await client.get(path)
        assert resp.status == 200, path
        assert "10.9.8.7" not in await resp.text()


class Listener:
    """A stand-in engine that counts the connections made to it."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    counted = Listener()
    server = await asyncio.start_server(counted.serve, HOST, free_port())
    counted.port = server.sockets[0].getsockname()[1]
    async with server:
        yield counted


async def test_a_check_on_demand_needs_the_token_and_connects_nowhere_without_it(
    make_client: MakeClient, listener: Listener
) -> None:
    client = await make_client(token=TOKEN, admin_token=ADMIN)
    target = service("probe", host=HOST, port=listener.port)
    assert (await client.post("/services", json=target, headers=WRITE)).status == 201
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        await assert_error(await client.get("/services/probe/health", headers=headers), 401)
    await asyncio.sleep(0.1)
    assert listener.connections == 0
    for headers in (WRITE, {"Authorization": f"Bearer {ADMIN}"}):
        resp = await client.get("/services/probe/health", headers=headers)
        assert resp.status == 200
        assert (await resp.json())["healthy"] is True
    assert listener.connections == 2  # the stand-in counts what it is sent
