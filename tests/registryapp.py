"""The registry's app in process for its API tests: a client, a registration, a lease, an error.

Each test module keeps a three-line ``make_client`` fixture over :func:`registry_client`
(fixtures imported from another module are not found by name), and shares the rest.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from llmsvc.core.registry_client import LEASE_HEADER
from llmsvc.registry.app import create_app
from llmsvc.registry.settings import RegistrySettings

MakeClient = Callable[..., Awaitable[TestClient[Any, Any]]]


async def registry_client(aiohttp_client: Any, **overrides: Any) -> TestClient[Any, Any]:
    """A registry with ``overrides`` on its settings; checks and cleanup every 60 s.

    Without a ``token`` (or ``token_file``) it runs with ``--allow-anonymous-writes``.
    """
    if "token" not in overrides and "token_file" not in overrides:
        overrides.setdefault("allow_anonymous_writes", True)
    settings = RegistrySettings(health_interval=60, cleanup_interval=60, **overrides)
    client: TestClient[Any, Any] = await aiohttp_client(
        create_app(settings, registry=CollectorRegistry())
    )
    return client


def service(name: str = "engine-a", **extra: Any) -> dict[str, Any]:
    """A registration of ``name`` on 127.0.0.1:8000, with ``extra`` fields."""
    return {"name": name, "host": "127.0.0.1", "port": 8000, **extra}


def held(registered: dict[str, Any], **headers: str) -> dict[str, str]:
    """The headers of a write by the holder of ``registered`` (a registration's answer):
    its lease, and any ``headers`` besides."""
    return {LEASE_HEADER: registered["lease"], **headers}


async def assert_error(resp: Any, status: int, param: str | None = None) -> dict[str, Any]:
    """The OpenAI error object of ``resp``; fails unless it has ``status``, the four
    fields, a message without a traceback and (when given) names ``param``."""
    assert resp.status == status, await resp.text()
    body = await resp.json()
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param, error
    assert "Traceback" not in error["message"]
    return dict(error)
