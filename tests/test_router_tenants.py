"""API keys as tenants: the keys file's two formats, every refusal of a bad file (one line
naming the line), the ring (digests only) and the middleware that sets the tenant."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from llmsvc.core.app import Route, make_app
from llmsvc.core.jsonio import json_response
from llmsvc.router.config import ConfigError
from llmsvc.router.priority import Priority
from llmsvc.router.settings import RouterSettings
from llmsvc.router.tenants import (
    ANONYMOUS,
    KeyRing,
    KeysFile,
    ModelNotAllowed,
    Tenant,
    load_keyring,
    parse_keys,
    tenant_middleware,
    tenant_of,
)

Client = TestClient[web.Request, web.Application]
AiohttpClient = Callable[[web.Application], Awaitable[Client]]

SRC = "--api-keys-file: keys.yaml"
SHA = hashlib.sha256(b"hidden").hexdigest()


def tenants(text: str) -> dict[str, Tenant]:
    return {t.name: t for _, t in parse_keys(text, source=SRC)}


def test_plain_keys_are_tenants_without_limits() -> None:
    entries = parse_keys("# team keys\nk1\n\n  k2  # ci\nk1\n", source=SRC)
    assert len(entries) == 2  # k1 once
    digest = hashlib.sha256(b"k1").digest()
    assert entries[0] == (digest, Tenant(name=f"key-{digest.hex()[:8]}"))
    assert not entries[0][1].limited and entries[0][1].max_priority is Priority.CRITICAL


def test_yaml_records() -> None:
    text = f"""
- name: team-a
  key: sk-a
  max_priority: Standard
  rpm: 6
  tpm: 1000
  models: [m1, m2]
- name: team-b
  key_sha256: {SHA.upper()}
"""
    found = tenants(text)
    assert found["team-a"] == Tenant(
        name="team-a",
        max_priority=Priority.STANDARD,
        rpm=6,
        tpm=1000,
        models=frozenset({"m1", "m2"}),
    )
    assert found["team-b"] == Tenant(name="team-b")
    ring = KeyRing(parse_keys(text, source=SRC))
    assert ring.lookup("sk-a") == found["team-a"]
    assert ring.lookup(b"hidden") == found["team-b"]
    assert ring.lookup("sk-b") is None and len(ring) == 2
    assert tenants("keys:\n  - {name: c, key: k}\n")["c"].name == "c"
    assert found["team-a"].may_use("m1") and not found["team-a"].may_use("m3")
    assert found["team-b"].may_use("anything")


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("- name: a\n  key: k\n  rpm: 0\n", 3, "rpm must be an integer >= 1"),
        ("- name: a\n  key: k\n  rpm: '5'\n", 3, "rpm must be an integer >= 1"),
        ("- name: a\n  key: k\n  tpm: 1.5\n", 3, "tpm must be an integer >= 1"),
        ("- name: a\n  key: k\n  tpm: true\n", 3, "tpm must be an integer >= 1"),
        (
            "- {name: a, key: k}\n- name: b\n  key: j\n  max_priority: urgent\n",
            4,
            "max_priority must be one of critical, standard, sheddable, batch",
        ),
        ("- name: a\n  key_sha256: abc\n", 2, "key_sha256 must be 64 hex digits"),
        (f"- name: a\n  key: k\n  key_sha256: {SHA}\n", 1, "key or key_sha256 (not both)"),
        ("- name: a\n  rpm: 5\n", 1, "key or key_sha256 (one is required)"),
        ("- key: k\n", 1, "name is required"),
        ("- {name: a, key: k}\n\n- {name: a, key: j}\n", 3, "duplicate name 'a' (also line 1)"),
        ("- {name: a, key: k}\n- {name: b, key: k}\n", 2, "duplicate key (also line 1)"),
        ("- name: a\n  key: k\n  rmp: 5\n", 3, "unknown field 'rmp'"),
        ("- name: a\n  key: k\n  name: b\n", 3, "field 'name' given twice"),
        ("- name: a b\n  key: k\n", 1, "name must be 1 to 64 letters"),
        ("- name: a\n  key: 12345\n", 2, "key must be a non-empty string"),
        ("- name: a\n  key: k\n  models: []\n", 3, "models must be a non-empty list"),
        ("- {name: a, key: k}\n- just-a-key\n", 2, "a record is a mapping"),
        ("team: {name: a, key: k}\n", 1, "a list of records, or {keys: [...]}"),
        ("- name: a\n  key: k\n  rpm: [5\n", 4, "not valid YAML"),
        ("sk-1\nsk 2\n", 2, "a key is one word"),
    ],
)
def test_bad_keys_file_is_one_line_naming_the_line(text: str, line: int, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_keys(text, source=SRC)
    error = str(info.value)
    assert "\n" not in error
    assert error.startswith(f"{SRC} line {line}: "), error
    assert message in error


def test_no_plaintext_kept() -> None:
    ring = KeyRing(parse_keys("- {name: a, key: sk-secret-value}\n", source=SRC))
    assert b"sk-secret-value" not in repr(ring._by_digest).encode()


def test_load_keyring_flags_and_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text("- {name: limited, key: k1, rpm: 3}\n")
    ring = load_keyring(RouterSettings(api_keys=["k1", "k2"], api_keys_file=str(path)))
    assert len(ring) == 2
    k1 = ring.lookup("k1")
    assert k1 is not None and k1.name == "limited" and k1.rpm == 3  # the file's record wins
    k2 = ring.lookup("k2")
    assert k2 is not None and k2.name.startswith("key-") and not k2.limited
    with pytest.raises(ConfigError, match="cannot read"):
        load_keyring(RouterSettings(api_keys_file=str(tmp_path / "absent")))
    path.write_text("keys: []\n")
    with pytest.raises(ConfigError, match="holds no key"):
        load_keyring(RouterSettings(api_keys_file=str(path)))


def test_keys_file_reload(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text("- {name: a, key: k1}\n")
    settings = RouterSettings(api_keys_file=str(path))
    watched = KeysFile(settings, load_keyring(settings))
    before = watched.ring
    assert not watched.check()  # unchanged: not even read
    path.write_text("- {name: b, key: k2}\n")
    os.utime(path, ns=(1, 1))
    assert watched.check()
    assert watched.ring.lookup("k1") is None and watched.ring.lookup("k2") is not None
    assert before.lookup("k1") is not None  # the old ring is untouched (in-flight requests)
    good = watched.ring
    caplog.set_level(logging.ERROR, "llmsvc.router.tenants")
    path.write_text("- {name: b, key: k2, rpm: 0}\n")
    os.utime(path, ns=(2, 2))
    for _ in range(3):
        assert not watched.check()
    assert watched.ring is good
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "line 1: rpm must be" in errors[0].getMessage()
    # A symlink swapped to a new file (a Kubernetes Secret update): a new inode.
    target = tmp_path / "v2.yaml"
    target.write_text("- {name: c, key: k3}\n")
    os.utime(target, ns=(2, 2))
    link = tmp_path / "link.yaml"
    link.symlink_to(path)
    watched = KeysFile(RouterSettings(api_keys_file=str(link)), good)
    link.unlink()
    link.symlink_to(target)
    assert watched.check() and watched.ring.lookup("k3") is not None


async def echo_tenant(request: web.Request) -> web.Response:
    tenant = tenant_of(request)
    return json_response({"tenant": tenant.name})


def tenant_app(ring: Callable[[], KeyRing]) -> web.Application:
    routes = [
        Route("POST", "/v1/chat/completions", echo_tenant, "routed"),
        Route("GET", "/models", echo_tenant, "models"),
        Route("GET", "/health", echo_tenant, "open"),
    ]
    return make_app(title="t", version="0", routes=routes, middlewares=[tenant_middleware(ring)])


async def test_middleware_sets_the_tenant(aiohttp_client: AiohttpClient) -> None:
    rings = [KeyRing(parse_keys("- {name: a, key: k1}\n", source=SRC))]
    client = await aiohttp_client(tenant_app(lambda: rings[-1]))
    auth = {"Authorization": "Bearer k1"}
    answer = await client.post("/v1/chat/completions", headers=auth)
    assert answer.status == 200 and (await answer.json()) == {"tenant": "a"}
    for headers in ({}, {"Authorization": "Bearer k2"}, {"Authorization": "Basic k1"}):
        for method, path in (("POST", "/v1/chat/completions"), ("GET", "/models")):
            refused = await client.request(method, path, headers=headers)
            assert refused.status == 401
            error = (await refused.json())["error"]
            assert error["code"] == "invalid_api_key"
            assert error["message"] == (
                "Missing or invalid API key: send 'Authorization: Bearer <key>'"
            )
            assert refused.headers["WWW-Authenticate"] == "Bearer"
    health = await client.get("/health")
    assert (await health.json()) == {"tenant": "anonymous"}  # open path, no key
    # The ring is read per request: a reload applies to the next one.
    rings.append(KeyRing(parse_keys("- {name: b, key: k2}\n", source=SRC)))
    assert (await client.post("/v1/chat/completions", headers=auth)).status == 401
    moved = await client.post("/v1/chat/completions", headers={"Authorization": "Bearer k2"})
    assert (await moved.json()) == {"tenant": "b"}


async def test_no_keys_is_one_anonymous_tenant(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(tenant_app(KeyRing))
    answer = await client.post("/v1/chat/completions")
    assert (await answer.json()) == {"tenant": ANONYMOUS.name}


def test_model_not_allowed_error() -> None:
    error = ModelNotAllowed("m2")
    assert (error.status, error.code, error.param, error.type) == (
        403,
        "model_not_allowed",
        "model",
        "permission_error",
    )
    assert "m2" in error.message
