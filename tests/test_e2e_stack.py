"""The seeds' validation scenario with real processes: registry, router, two engines.

The pattern [non-stream, non-stream, stream, stream] alternates between the two
backends, and deregistration removes a backend from routing.
"""

from __future__ import annotations

import itertools

import httpx
import orjson

from procs import (
    HOST,
    Spawn,
    free_port,
    registry_record,
    start_babysitter,
    start_registry,
    start_router,
)
from procs import wait_until as wait

MODEL = "sim-model"


def chat(router_url: str, stream: bool, model: str = MODEL) -> tuple[str, str]:
    """One chat request; returns (backend header, engine id from the body's fingerprint)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "stream": stream,
    }
    with httpx.stream("POST", f"{router_url}/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200, r.read()
        backend = r.headers["x-llmsvc-backend"]
        if not stream:
            return backend, orjson.loads(r.read())["system_fingerprint"]
        fingerprints, done = set(), False
        for line in r.iter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                fingerprints.add(orjson.loads(line[6:])["system_fingerprint"])
        assert done, "stream ended without [DONE]"
        assert len(fingerprints) == 1
        return backend, fingerprints.pop()


def healthy_backends(router_url: str) -> int:
    return int(httpx.get(f"{router_url}/health", timeout=5).json()["healthy_backends"])


def test_round_robin_pattern_and_deregistration(spawn: Spawn) -> None:
    _, registry = start_registry(spawn)
    _, _, _ = start_babysitter(spawn, registry, "engine-a")
    sitter_b, _, _ = start_babysitter(spawn, registry, "engine-b")
    _, router = start_router(spawn, registry)
    wait(lambda: healthy_backends(router) == 2, what="router sees both engines")

    served = [chat(router, stream) for stream in (False, False, True, True) * 2]
    backends = [backend for backend, _ in served]
    assert set(backends) == {"engine-a", "engine-b"}
    assert all(x != y for x, y in itertools.pairwise(backends)), backends
    # The engine's own word agrees with the router's header.
    assert all(backend == engine for backend, engine in served)

    # A babysitter stopped gracefully deregisters its engine: traffic goes to the other one.
    sitter_b.stop()
    wait(lambda: registry_record(registry, "engine-b") is None, what="engine-b deregistered")
    wait(lambda: healthy_backends(router) == 1, what="router drops engine-b")
    assert {chat(router, stream)[0] for stream in (False, True) * 3} == {"engine-a"}


def test_manual_registration_and_deregistration(spawn: Spawn) -> None:
    """The seeds' "mock service": registered by hand, routed to, deregistered, gone."""
    _, registry = start_registry(spawn)
    start_babysitter(spawn, registry, "engine-a")
    _, router = start_router(spawn, registry)
    port = free_port()
    mock = spawn(
        "mock",
        "sim-engine",
        "--port",
        str(port),
        "--model-name",
        MODEL,
        "--engine-id",
        "mock",
        "--time-scale",
        "0",
    )
    mock.wait_http(f"http://{HOST}:{port}/health")
    record = {"name": "mock", "host": HOST, "port": port, "metadata": {"models": [MODEL]}}
    registered = httpx.post(f"{registry}/services", json=record)
    assert registered.status_code == 201
    wait(lambda: healthy_backends(router) == 2, what="router sees the mock")
    assert {chat(router, False)[0] for _ in range(4)} == {"engine-a", "mock"}

    lease = {"X-Llmsvc-Lease": registered.json()["lease"]}  # the holder removes its record
    assert httpx.delete(f"{registry}/services/mock", headers=lease).status_code == 200
    wait(lambda: healthy_backends(router) == 1, timeout=3, what="router drops the mock")
    assert {chat(router, s)[0] for s in (False, True) * 3} == {"engine-a"}
