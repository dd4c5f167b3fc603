"""A real llama-server with a real model, through a real babysitter, registry and router.

Each test's stack: a registry with a write token, a babysitter of ``--engine llama.cpp
--model SmolLM2-135M-Instruct.Q4_1.gguf`` and a router with ``--strategy least_load``.
The clients are the official ``openai`` package with its retries off, so that every
failure shows. A stack costs seconds, so each test checks a whole story. Needs
``make real-engine``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from procs import Spawn, registry_record, start_registry, start_router, status, wait_until
from realengine import MARKS, MODEL_NAME, spawn_llama_babysitter

pytestmark = list(MARKS)

TOKEN = "real-engine-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass(frozen=True)
class Stack:
    registry: str
    router: str
    api: str  # the babysitter's
    engine: str
    name: str  # the engine's registry record
    startup: list[tuple[int, dict[str, Any]]]  # the babysitter's /health answers as they changed


@pytest.fixture
def stack(
    real_engine_slot: None, spawn: Spawn, llama_server_bin: Path, smollm2_gguf: Path
) -> Stack:
    _, registry = start_registry(spawn, token=TOKEN)
    env = {"LLMSVC_REGISTRY_TOKEN": TOKEN}
    proc, port, api = spawn_llama_babysitter(
        spawn, llama_server_bin, smollm2_gguf, "--registry", registry, env=env
    )
    startup = _health_changes_until_ready(api, alive=proc.alive)
    _, router = start_router(spawn, registry, "--strategy", "least_load", "--registry-token", TOKEN)
    wait_until(lambda: MODEL_NAME in _router_models(router), timeout=10, what="router sees it")
    name = f"{MODEL_NAME}@127.0.0.1:{port}"
    return Stack(registry, router, api, f"http://127.0.0.1:{port}", name, startup)


def _health_changes_until_ready(api: str, *, alive: Any) -> list[tuple[int, dict[str, Any]]]:
    """Poll the babysitter's /health until 200; every change of (status, body) seen."""
    changes: list[tuple[int, dict[str, Any]]] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and alive():
        try:
            resp = httpx.get(api + "/health", timeout=2)
        except httpx.HTTPError:
            time.sleep(0.02)
            continue
        seen = (resp.status_code, resp.json())
        if not changes or changes[-1] != seen:
            changes.append(seen)
        if resp.status_code == 200:
            return changes
        time.sleep(0.02)
    raise AssertionError(f"the babysitter never got ready: {changes}")


def _router_models(router: str) -> list[str]:
    resp = httpx.get(router + "/v1/models", timeout=5)
    return [m["id"] for m in resp.json()["data"]] if resp.status_code == 200 else []


def _client(stack: Stack) -> OpenAI:
    return OpenAI(base_url=stack.router + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_llama_cpp_loads_registers_under_its_file_name_and_heartbeats(stack: Stack) -> None:
    # Readiness while it loads: the babysitter answers 503 until the engine is ready.
    (first, unready), (last, ready) = stack.startup[0], stack.startup[-1]
    assert first == 503, stack.startup
    assert unready["error"]["code"] == "engine_not_ready"
    assert "state: starting" in unready["error"]["message"]
    assert (last, ready["state"]) == (200, "ready"), stack.startup
    assert httpx.get(stack.engine + "/health", timeout=5).json() == {"status": "ok"}
    # The model's name is the GGUF file's stem: asked of llama-server (--alias), then read
    # back from its /v1/models, registered, and routed.
    st = status(stack.api)
    assert (st["model_name"], st["models"]) == (MODEL_NAME, [MODEL_NAME])
    engine_models = httpx.get(stack.engine + "/v1/models", timeout=5).json()
    assert [m["id"] for m in engine_models["data"]] == [MODEL_NAME]
    assert _router_models(stack.router) == [MODEL_NAME]
    _check_registered_and_heartbeating(stack)


def _check_registered_and_heartbeating(stack: Stack) -> None:
    def record() -> dict[str, Any]:
        resp = httpx.get(f"{stack.registry}/services/{stack.name}", headers=AUTH, timeout=5)
        assert resp.status_code == 200, resp.text
        data: dict[str, Any] = resp.json()
        return data

    first = record()
    assert first["metadata"]["models"] == [MODEL_NAME]
    assert first["metadata"]["engine"] == "llama.cpp"
    assert first["metadata"]["babysitter_url"] == stack.api
    assert first["status"] == "healthy"
    assert registry_record(stack.registry, stack.name) is None  # reads need the token
    wait_until(
        lambda: record()["last_heartbeat"] > first["last_heartbeat"],
        timeout=10, what="a later heartbeat",
    )  # fmt: skip
    assert status(stack.api)["registered"] == {"engine": True, "babysitter": True}


def test_openai_client_through_the_router(stack: Stack) -> None:
    client = _client(stack)
    _check_chat(client)
    _check_completion(client)
    _check_streamed_chat_ends_with_usage(client)
    _check_streamed_completion(client)


def _check_chat(client: OpenAI) -> None:
    answer = client.chat.completions.create(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        temperature=0,
    )
    assert answer.model == MODEL_NAME
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content
    assert answer.usage is not None
    assert 0 < answer.usage.completion_tokens <= 8
    assert answer.usage.prompt_tokens > 0


def _check_completion(client: OpenAI) -> None:
    answer = client.completions.create(
        model=MODEL_NAME, prompt="Once upon a time", max_tokens=8, temperature=0
    )
    assert answer.choices[0].text
    assert answer.usage is not None
    assert 0 < answer.usage.completion_tokens <= 8


def _check_streamed_chat_ends_with_usage(client: OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL_NAME,
            messages=[{"role": "user", "content": "Count to five."}],
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert len([c for c in chunks if c.choices]) > 1  # streamed, not one piece
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert 0 < last.usage.completion_tokens <= 12
    assert all(c.usage is None for c in chunks[:-1])


def _check_streamed_completion(client: OpenAI) -> None:
    chunks = list(
        client.completions.create(
            model=MODEL_NAME, prompt="The sky is", max_tokens=8, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices)
    assert len(chunks) > 1


def test_least_load_reads_the_busy_engines_metrics(stack: Stack) -> None:
    def engine_view() -> dict[str, Any]:
        resp = httpx.get(stack.router + "/services", timeout=5)
        resp.raise_for_status()
        views = resp.json()["services"]
        return next(v for v in views if v["name"] == stack.name)

    def busy_load() -> dict[str, Any] | None:
        load: dict[str, Any] | None = engine_view()["load"]
        return load if load and load["running"] >= 1 else None

    with _busy(stack, requests=2):
        load = wait_until(busy_load, timeout=20, what="a scrape of the busy engine")
    assert load["age_s"] < 3
    # llama.cpp 11434 exports no KV-cache series: least_load takes busy slots over the
    # slots of GET /props (-np 2) instead, so a busy engine's KV input is not zero.
    assert load["kv_cache_use"] == pytest.approx(load["running"] / 2)
    assert load["kv_cache_use"] > 0
    assert load["missing"] == [], load  # every input read, none taken as 0
    idle = wait_until(
        lambda: (v := engine_view()["load"]) and v["running"] == 0 and v,
        timeout=20, what="the engine idle again",
    )  # fmt: skip
    assert idle["kv_cache_use"] == 0


@contextlib.contextmanager
def _busy(stack: Stack, *, requests: int) -> Iterator[None]:
    """``requests`` long chat completions in flight through the router meanwhile; all succeed."""
    errors: list[BaseException] = []

    def one() -> None:
        try:
            _client(stack).chat.completions.create(
                model=MODEL_NAME,
                messages=[{"role": "user", "content": "Write a long story about a cat."}],
                max_tokens=24,
            )
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(requests)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        for thread in threads:
            thread.join(60)
    assert not errors, errors
