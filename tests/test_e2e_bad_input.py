"""Bad input to every component's endpoints, over real sockets.

Malformed JSON, wrong types, missing or non-string ``model``, oversized bodies,
unknown paths, wrong methods and bad credentials get the right status in the
OpenAI error shape, and every process keeps serving afterwards.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from procs import HOST, ProcGroup, free_port, start_babysitter, start_registry, start_router

TOKEN = "registry-secret"
KEY = "router-key"


@pytest.fixture(scope="module")
def stack(module_spawn: ProcGroup) -> dict[str, str]:
    _, registry = start_registry(module_spawn, "--token", TOKEN)
    _, engine, sitter = start_babysitter(
        module_spawn, registry, "engine-a", "--registry-token", TOKEN
    )
    _, router = start_router(module_spawn, registry, "--max-body-bytes", "4096")
    _, keyed = start_router(module_spawn, registry, "--api-keys", KEY, name="keyed-router")
    return {
        "registry": registry,
        "engine": engine,
        "babysitter": sitter,
        "router": router,
        "keyed": keyed,
    }


CHAT = "/v1/chat/completions"
BIG = b'{"model": "sim-model", "pad": "' + b"x" * 10_000_000 + b'"}'
AUTH = {"Authorization": f"Bearer {TOKEN}"}

CASES: list[tuple[str, str, str, dict[str, Any], int]] = [
    # target, method, path, request kwargs, expected status
    ("router", "POST", CHAT, {"content": b"{not json"}, 400),
    ("router", "POST", CHAT, {"content": b"[1,2,3]"}, 400),
    ("router", "POST", CHAT, {"json": {"messages": []}}, 400),
    ("router", "POST", CHAT, {"json": {"model": 42, "messages": []}}, 400),
    ("router", "POST", CHAT, {"json": {"model": ["a"], "messages": []}}, 400),
    ("router", "POST", CHAT, {"json": {"model": "sim-model", "stream": "yes"}}, 400),
    ("router", "POST", CHAT, {"json": {"model": "sim-model", "pad": "x" * 5000}}, 413),
    ("router", "POST", CHAT, {"json": {"model": "nope", "messages": []}}, 404),
    ("router", "POST", "/v1/embeddings", {"content": b""}, 400),
    ("router", "GET", "/v1/nothing-here", {}, 404),
    ("router", "GET", CHAT, {}, 405),
    ("router", "DELETE", "/v1/models", {}, 405),
    ("keyed", "POST", CHAT, {"json": {"model": "sim-model", "messages": []}}, 401),
    ("keyed", "GET", "/v1/models", {"headers": {"Authorization": "Bearer wrong"}}, 401),
    ("registry", "POST", "/services", {"content": b"{oops", "headers": AUTH}, 400),
    (
        "registry",
        "POST",
        "/services",
        {"json": {"name": "x", "host": "h", "port": "http"}, "headers": AUTH},
        400,
    ),
    ("registry", "POST", "/services", {"json": {"host": "h", "port": 1}, "headers": AUTH}, 400),
    ("registry", "POST", "/services", {"json": {"name": "x", "host": "h", "port": 1}}, 401),
    (
        "registry",
        "POST",
        "/services",
        {
            "json": {"name": "x", "host": "h", "port": 1},
            "headers": {"Authorization": "Bearer nope"},
        },
        401,
    ),
    ("registry", "POST", "/services", {"content": BIG, "headers": AUTH}, 413),
    ("registry", "GET", "/services", {"params": {"healthy": "maybe"}, "headers": AUTH}, 400),
    (
        "registry",
        "GET",
        "/services",
        {"params": {"index": "x", "wait": "1s"}, "headers": AUTH},
        400,
    ),
    ("registry", "GET", "/services/no-such", {"headers": AUTH}, 404),
    ("registry", "GET", "/services", {}, 401),
    (
        "registry",
        "POST",
        "/services/engine-a/heartbeat",
        {"json": {"status": "dead"}, "headers": AUTH},
        400,
    ),
    ("registry", "POST", "/services/engine-a/heartbeat", {"content": b"[", "headers": AUTH}, 400),
    ("registry", "DELETE", "/services/engine-a", {}, 401),
    ("registry", "GET", "/nowhere", {}, 404),
    ("registry", "PATCH", "/services", {}, 405),
    ("engine", "POST", CHAT, {"content": b"{not json"}, 400),
    ("engine", "POST", CHAT, {"json": {"messages": [{"role": "user", "content": "x"}]}}, 400),
    ("engine", "POST", CHAT, {"json": {"model": 7, "messages": []}}, 400),
    (
        "engine",
        "POST",
        CHAT,
        {
            "json": {
                "model": "sim-model",
                "messages": [{"role": "user", "content": "x"}],
                "max_tokens": "many",
            }
        },
        400,
    ),
    (
        "engine",
        "POST",
        CHAT,
        {"json": {"model": "other", "messages": [{"role": "user", "content": "x"}]}},
        404,
    ),
    ("engine", "POST", "/v1/embeddings", {"json": {"model": "sim-model"}}, 400),
    ("engine", "GET", "/v1/nothing", {}, 404),
    ("engine", "GET", CHAT, {}, 405),
    ("babysitter", "GET", "/nothing", {}, 404),
    ("babysitter", "GET", "/restart", {}, 405),
    ("babysitter", "POST", "/health", {}, 405),
]


@pytest.mark.parametrize(
    ("target", "method", "path", "kwargs", "status"),
    CASES,
    ids=[f"{c[0]}-{c[1]}-{c[2]}-{c[4]}-{i}" for i, c in enumerate(CASES)],
)
def test_bad_input_gets_a_clear_error(
    stack: dict[str, str],
    target: str,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
) -> None:
    base = stack[target]
    resp = httpx.request(method, base + path, timeout=30, **kwargs)
    assert resp.status_code == status, resp.text[:300]
    body = resp.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"] and "Traceback" not in resp.text
    # The process keeps serving.
    health = httpx.get(base + "/health", timeout=10)
    assert health.status_code == 200


def test_unknown_model_message_is_the_contracts(stack: dict[str, str]) -> None:
    resp = httpx.post(stack["router"] + CHAT, json={"model": "nope", "messages": []})
    error = resp.json()["error"]
    assert error["message"] == "The model `nope` does not exist or you do not have access to it."
    assert (resp.status_code, error["code"]) == (404, "model_not_found")


def test_slow_client_does_not_block_others(stack: dict[str, str]) -> None:
    """A client that sends half a request and stalls does not hold up anyone else."""
    import socket

    port = int(stack["router"].rsplit(":", 1)[1])
    with socket.create_connection((HOST, port)) as slow:
        slow.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"
        )
        resp = httpx.get(stack["router"] + "/v1/models", timeout=5)
        assert resp.status_code == 200
    assert free_port()  # sockets were released
