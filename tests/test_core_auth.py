"""One bearer check (core.auth) behind the router's API keys and the registry's token."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from llmsvc.core.app import Route, make_app
from llmsvc.core.auth import BearerAuth, bearer_credentials
from llmsvc.core.jsonio import json_response
from llmsvc.registry.api import ROUTES as REGISTRY_ROUTES
from llmsvc.registry.app import create_app as create_registry
from llmsvc.registry.settings import RegistrySettings
from llmsvc.router.app import create_app as create_router
from llmsvc.router.settings import RouterSettings

Client = TestClient[web.Request, web.Application]
AiohttpClient = Callable[[web.Application], Awaitable[Client]]

ACCEPTED = ("Bearer k1", "bearer k1", "BEARER k1", "bEaReR k1", "Bearer   k1  ", "Bearer k2")
REFUSED: tuple[dict[str, str], ...] = (
    {},
    {"Authorization": ""},
    {"Authorization": "Bearer wrong"},
    {"Authorization": "Bearer k1x"},
    {"Authorization": "Bearer "},
    {"Authorization": "Bearer"},
    {"Authorization": "k1"},
    {"Authorization": "Basic k1"},
    {"Authorization": "Token k1"},
    {"Authorization": "Bearerk1"},
)


# -- the check itself ------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "key"),
    [
        ("Bearer abc", b"abc"),
        ("bearer abc", b"abc"),
        ("BEARER abc", b"abc"),
        ("Bearer  abc ", b"abc"),
        ("Bearer a b", b"a b"),
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("Basic abc", None),
        ("abc", None),
        (" Bearer abc", None),
    ],
)
def test_bearer_credentials(header: str | None, key: bytes | None) -> None:
    assert bearer_credentials(header) == key


def test_accepts_any_of_its_keys_only() -> None:
    auth = BearerAuth(keys=(b"k1", b"k2"))
    for header in ACCEPTED:
        assert auth.accepts(header), header
    for headers in REFUSED:
        assert not auth.accepts(headers.get("Authorization")), headers
    assert not BearerAuth(keys=()).accepts("Bearer k1")


def test_a_key_outside_utf8_is_compared_as_sent() -> None:
    raw = "Bearer k\udcff"  # how aiohttp hands over a header byte 0xff
    assert BearerAuth(keys=(b"k\xff",)).accepts(raw)
    assert not BearerAuth(keys=(b"k1",)).accepts(raw)


def test_refusal_is_a_401_with_the_services_words() -> None:
    error = BearerAuth(keys=(b"k",), message="no", code="nope").refusal()
    assert error.status == 401
    assert error.headers == {"WWW-Authenticate": "Bearer"}
    assert error.body() == {
        "error": {"message": "no", "type": "authentication_error", "param": None, "code": "nope"}
    }


async def test_make_app_guards_only_protected_routes(aiohttp_client: AiohttpClient) -> None:
    async def ok(_: web.Request) -> web.Response:
        return json_response({"ok": True})

    routes = [
        Route("GET", "/open", ok, "open"),
        Route("POST", "/open", ok, "open write"),
        Route("POST", "/guarded", ok, "guarded", protected=True),
    ]
    auth = BearerAuth(keys=(b"k1",))
    client = await aiohttp_client(make_app(title="t", version="0", routes=routes, auth=auth))
    assert (await client.get("/open")).status == 200
    assert (await client.post("/open")).status == 200
    assert (await client.post("/guarded")).status == 401
    assert (await client.post("/guarded", headers={"Authorization": "bearer k1"})).status == 200
    assert (await client.get("/guarded")).status == 405  # not a route: no key asked for
    assert (await client.post("/nowhere")).status == 404
    # Without auth, protected routes are open.
    client = await aiohttp_client(make_app(title="t", version="0", routes=routes))
    assert (await client.post("/guarded")).status == 200


def test_the_registry_guards_all_but_its_health_and_metrics_and_documents_it() -> None:
    for route in REGISTRY_ROUTES:
        # Reads show where every engine is: with a token they need it too.
        guarded = route.path not in ("/health", "/metrics")
        assert route.protected == guarded, (route.method, route.path)
        assert (401 in route.errors) == guarded, (route.method, route.path)


# -- both services answer alike --------------------------------------------------


async def _refusals(client: Client, method: str, path: str, **kw: Any) -> list[Any]:
    """The body of every refused request, after checking status and header."""
    bodies = []
    for headers in REFUSED:
        resp = await client.request(method, path, headers=headers, **kw)
        assert resp.status == 401, (headers, await resp.text())
        assert resp.headers["WWW-Authenticate"] == "Bearer"
        bodies.append(await resp.json())
    return bodies


async def test_registry_token(aiohttp_client: AiohttpClient) -> None:
    settings = RegistrySettings(token="k1", health_interval=60, cleanup_interval=60)
    client = await aiohttp_client(create_registry(settings, registry=CollectorRegistry()))
    record = {"name": "a", "host": "127.0.0.1", "port": 8000}
    bodies = await _refusals(client, "POST", "/services", json=record)
    assert bodies == [bodies[0]] * len(bodies)  # one body for every way of being refused
    assert bodies[0] == {
        "error": {
            "message": "Missing or invalid bearer token in the Authorization header",
            "type": "authentication_error",
            "param": None,
            "code": "invalid_token",
        }
    }
    lease: dict[str, str] = {}  # the name's lease, from its first registration
    for header in ("Bearer k1", "bearer k1", "BEARER k1"):
        headers = {"Authorization": header, **lease}
        resp = await client.post("/services", json=record, headers=headers)
        assert resp.status in (200, 201), header
        lease = {"X-Llmsvc-Lease": (await resp.json())["lease"]}
        resp = await client.post("/services/a/heartbeat", headers={**headers, **lease})
        assert resp.status == 200, header
    for method, path in (("PUT", "/services/a"), ("DELETE", "/services/a")):
        assert await _refusals(client, method, path, json=record) == bodies
    assert await _refusals(client, "GET", "/services/a") == bodies  # reads need it too
    assert (await client.get("/services/a", headers={"Authorization": "Bearer k1"})).status == 200


async def test_router_api_keys(aiohttp_client: AiohttpClient) -> None:
    settings = RouterSettings(api_keys=["k1", "k2"])
    client = await aiohttp_client(create_router(settings, registry=CollectorRegistry()))
    bodies = await _refusals(client, "GET", "/v1/models")
    assert bodies == [bodies[0]] * len(bodies)
    assert bodies[0] == {
        "error": {
            "message": "Missing or invalid API key: send 'Authorization: Bearer <key>'",
            "type": "authentication_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    for header in ACCEPTED:
        resp = await client.get("/v1/models", headers={"Authorization": header})
        assert resp.status == 200, header
    assert await _refusals(client, "POST", "/v1/chat/completions", json={}) == bodies
    assert (await client.get("/health")).status == 200  # not guarded
