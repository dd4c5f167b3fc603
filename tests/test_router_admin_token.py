"""The router's admin token: ``/stats``, ``/services`` and ``/metrics`` show every backend's
address, so with ``--admin-token`` they need it; API keys and the admin token are separate.

Issue 11, item 6: with ``--api-keys`` set, those three stayed open to anyone.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from llmsvc.router.settings import RouterSettings
from procs import HOST, Spawn, free_port, llmsvc_args
from routerbackends import BODY, CHAT, Backend, Client, running, static_router

ADMIN = "admin-token-0123456789"
API_KEY = "client-key-0123456789"
ADMIN_PATHS = ("/stats", "/services", "/metrics")

MakeClient = Callable[..., Awaitable[Client]]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def error_of(body: Any) -> dict[str, Any]:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


@pytest.fixture
def make_client(
    aiohttp_client: Callable[..., Awaitable[Client]], tmp_path: Path
) -> Callable[..., Awaitable[Client]]:
    async def make(backend: Backend, **options: Any) -> Client:
        return await static_router(aiohttp_client, tmp_path, [backend], **options)

    return make


async def test_admin_views_need_the_admin_token(make_client: MakeClient) -> None:
    """The attack: API keys set, yet the admin views answered anyone with every backend."""
    backend = Backend("e1")
    async with running(backend):
        client = await make_client(backend, api_keys=[API_KEY], admin_token=ADMIN)
        address = f"{HOST}:{backend.port}"
        for headers in ({}, bearer(API_KEY), bearer("nope"), {"Authorization": ADMIN}):
            for path in ADMIN_PATHS:
                resp = await client.get(path, headers=headers)
                text = await resp.text()
                assert resp.status == 401, (path, headers, text[:200])
                assert resp.headers["WWW-Authenticate"] == "Bearer"
                assert error_of(orjson.loads(text))["code"] == "invalid_token"
                assert address not in text and str(backend.port) not in text
        for path in ADMIN_PATHS:
            resp = await client.get(path, headers=bearer(ADMIN))
            assert resp.status == 200, path
        services = await (await client.get("/services", headers=bearer(ADMIN))).json()
        assert services["services"][0]["record"]["port"] == backend.port
        assert (await client.get("/health")).status == 200  # always open


async def test_api_keys_and_admin_token_open_only_their_own_paths(
    make_client: MakeClient,
) -> None:
    backend = Backend("e1")
    async with running(backend):
        client = await make_client(backend, api_keys=[API_KEY], admin_token=ADMIN)
        resp = await client.post(CHAT, json=BODY, headers=bearer(ADMIN))
        assert resp.status == 401
        assert error_of(await resp.json())["code"] == "invalid_api_key"
        for path in ("/v1/models", "/models"):
            assert (await client.get(path, headers=bearer(ADMIN))).status == 401
        resp = await client.post(CHAT, json=BODY, headers=bearer(API_KEY))
        assert resp.status == 200
        assert backend.hits == 1


async def test_admin_token_alone_leaves_the_routed_paths_open(make_client: MakeClient) -> None:
    backend = Backend("e1")
    async with running(backend):
        client = await make_client(backend, admin_token=ADMIN)
        assert (await client.post(CHAT, json=BODY)).status == 200
        assert (await client.get("/v1/models")).status == 200
        assert (await client.get("/stats")).status == 401
        assert (await client.get("/stats", headers=bearer(ADMIN))).status == 200


async def test_no_open_answer_shows_a_backend(make_client: MakeClient) -> None:
    """Every GET route of /openapi.json, asked without credentials, names no backend."""
    backend = Backend("e1")
    async with running(backend):
        client = await make_client(backend, api_keys=[API_KEY], admin_token=ADMIN)
        document = await (await client.get("/openapi.json")).json()
        paths = [p for p, ops in document["paths"].items() if "get" in ops and "{" not in p]
        assert set(ADMIN_PATHS) <= set(paths)
        for path in paths:
            text = await (await client.get(path)).text()
            assert f"{HOST}:{backend.port}" not in text, path
            assert f'"port":{backend.port}' not in text.replace(" ", ""), path
        for path in ADMIN_PATHS:
            responses = document["paths"][path]["get"]["responses"]
            assert "401" in responses, path


async def test_without_admin_token_the_views_stay_open(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    """As before, but a router with API keys says at start that they are open."""
    backend = Backend("e1")
    async with running(backend):
        with caplog.at_level(logging.WARNING, logger="llmsvc.router"):
            client = await make_client(backend, api_keys=[API_KEY])
        for path in ADMIN_PATHS:
            assert (await client.get(path)).status == 200, path
    [warning] = [r for r in caplog.records if "no --admin-token" in r.getMessage()]
    assert warning.levelno == logging.WARNING
    assert "/stats, /services and /metrics need no token" in warning.getMessage()


def test_tokens_from_files_and_never_shown(tmp_path: Path) -> None:
    admin, registry = tmp_path / "router-admin-token", tmp_path / "registry-token"
    admin.write_text(ADMIN + "\n")
    registry.write_text("registry-token-0123456789\n")
    settings = RouterSettings(admin_token_file=admin, registry_token_file=registry)
    assert settings.admin_token is not None and settings.registry_token is not None
    assert settings.admin_token.get_secret_value() == ADMIN
    assert settings.registry_token.get_secret_value() == "registry-token-0123456789"
    shown = repr(settings) + str(settings.model_dump())
    assert ADMIN not in shown and "registry-token-0123456789" not in shown


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--admin-token", "x", "--admin-token-file", "FILE"], "not both"),
        (["--registry-token", "x", "--registry-token-file", "FILE"], "not both"),
        (["--admin-token-file", "MISSING"], "--admin-token-file"),
    ],
)
def test_bad_token_flags_are_one_line(tmp_path: Path, args: list[str], expected: str) -> None:
    token = tmp_path / "token"
    token.write_text("t" * 20 + "\n")
    args = [str(token) if a == "FILE" else str(tmp_path / "none") if a == "MISSING" else a
            for a in args]  # fmt: skip
    run = subprocess.run(
        llmsvc_args("router", *args), capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], run.stderr
    assert "Traceback" not in run.stderr and "t" * 20 not in run.stderr


def test_workers_share_the_admin_token(spawn: Spawn, tmp_path: Path) -> None:
    """With --workers each worker reads the token file; /metrics (the workers' sum) needs it."""
    token = tmp_path / "router-admin-token"
    token.write_text(ADMIN + "\n")
    token.chmod(0o600)
    port = free_port()
    router = spawn(
        "router", "router", "--port", str(port), "--workers", "2",
        "--admin-token-file", str(token),
    )  # fmt: skip
    url = f"http://{HOST}:{port}"
    router.wait_http(f"{url}/health")
    for _ in range(8):  # new connections: the kernel spreads them over the workers
        assert httpx.get(f"{url}/metrics", timeout=5.0).status_code == 401
        assert httpx.get(f"{url}/stats", timeout=5.0).status_code == 401
    for _ in range(8):
        resp = httpx.get(f"{url}/metrics", headers=bearer(ADMIN), timeout=5.0)
        assert resp.status_code == 200 and "llmsvc_router_" in resp.text
    assert ADMIN not in router.log()
