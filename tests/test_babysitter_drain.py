"""Graceful stop with real registry, router and babysitter processes.

SIGTERM to the babysitter takes its engine out of the router first (deregistered;
the router hears of it by its blocking query), lets a long streaming request
finish, and only then stops the engine.
"""

from __future__ import annotations

import signal
import threading

import httpx

import metrics
from procs import Spawn, records, start_babysitter, start_registry, start_router, wait_until

BODY = {
    "model": "slow-model",
    "messages": [{"role": "user", "content": "tell me a story"}],
    "max_tokens": 40,
    "stream": True,
}


def _models(router: str) -> list[str]:
    return [m["id"] for m in httpx.get(router + "/v1/models", timeout=5).json()["data"]]


def _backends(router: str) -> list[str]:
    """The router's backends (/services): a deregistered engine leaves it, although its
    model stays known (and in /v1/models) while its babysitter's record names it."""
    return [s["name"] for s in httpx.get(router + "/services", timeout=5).json()["services"]]


def _running(engine: str) -> bool:
    return metrics.value(metrics.scrape(engine), "vllm:num_requests_running") > 0


def test_sigterm_drains_a_streaming_request_through_the_router(spawn: Spawn) -> None:
    _, registry = start_registry(spawn)
    # --hold-timeout 0: a request for the draining engine's model is refused at once (the
    # babysitter's record still names the model, so by default the router would hold it).
    _, router = start_router(spawn, registry, "--hold-timeout", "0")
    proc, engine, _ = start_babysitter(
        spawn, registry, "slow", "--drain-timeout", "15", model="slow-model",
        engine_args=("--decode-tokens-per-s", "20"),  # 40 tokens: about 2 s
    )  # fmt: skip
    wait_until(lambda: "slow-model" in _models(router), timeout=10, what="router knows the model")
    chunks: list[str] = []

    def stream() -> None:
        with httpx.stream("POST", router + "/v1/chat/completions", json=BODY, timeout=30) as r:
            chunks.extend(line for line in r.iter_lines() if line.startswith("data: "))

    client = threading.Thread(target=stream)
    client.start()
    wait_until(lambda: _running(engine), timeout=5, what="the request runs on the engine")
    proc.signal(signal.SIGTERM)
    # Out of the router while the stream still flows.
    wait_until(lambda: "slow" not in _backends(router), timeout=5, what="router drops it")
    assert client.is_alive(), "the stream ended before the backend left the router"
    refused = httpx.post(router + "/v1/chat/completions", json={**BODY, "stream": False})
    assert refused.status_code == 503
    client.join(20)
    assert chunks[-1] == "data: [DONE]"
    assert not any('"error"' in c for c in chunks)
    assert len(chunks) > 20
    assert proc.popen.wait(20) == 0
    assert "slow" not in records(registry)
    assert "the engine did not stop in time" not in proc.log()
