"""Model swap (``POST /model``) end to end through a real registry and router."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from llmsvc.babysitter.app import create_app
from llmsvc.babysitter.settings import BabysitterSettings
from procs import (
    Spawn,
    free_port,
    records,
    start_babysitter,
    start_registry,
    start_router,
    status,
    wait_until,
)

Client = Callable[..., Awaitable[TestClient[Any, Any]]]


def _chat(router: str, model: str) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return httpx.post(router + "/v1/chat/completions", json=body, timeout=10).status_code


def _swap_ended(api: str) -> dict[str, Any] | None:
    st = status(api)
    swap = st["swap"]
    return st if swap and swap["state"] != "in-progress" and st["state"] == "ready" else None


def test_swap_through_the_router_then_a_failed_swap_rolls_back(spawn: Spawn) -> None:
    _, registry = start_registry(spawn)
    _, router = start_router(spawn, registry)
    proc, _, api = start_babysitter(spawn, registry, "swappy", model="model-a")
    wait_until(lambda: _chat(router, "model-a") == 200, timeout=10, what="model-a served")
    first_pid = status(api)["pid"]

    resp = httpx.post(api + "/model", json={"model": "model-b"})
    assert resp.status_code == 202
    assert resp.json() == {
        "swapping": True, "state": "swapping", "from_model": "model-a", "to_model": "model-b",
    }  # fmt: skip
    busy = httpx.post(api + "/model", json={"model": "model-c"})
    assert busy.status_code == 409
    assert busy.json()["error"]["code"] == "swap_in_progress"
    st = wait_until(lambda: _swap_ended(api), timeout=20, what="swap done")
    assert st["swap"]["state"] == "done"
    assert (st["model"], st["model_name"], st["models"]) == ("model-b", "model-b", ["model-b"])
    assert st["pid"] != first_pid
    assert st["last_exit"]["reason"] == "Swapped"
    assert st["last_exit"]["model"] == "model-a"
    assert records(registry)["swappy"]["metadata"]["models"] == ["model-b"]
    wait_until(lambda: _chat(router, "model-b") == 200, timeout=5, what="model-b served")
    # The babysitter's record names model-b now (republished with the swap): model-a is
    # unknown, 404 (it was 503 while that record went on naming the old model).
    wait_until(lambda: _chat(router, "model-a") == 404, timeout=5, what="model-a unknown")
    assert "old engine released: process group gone" in proc.log()

    # A new model that cannot start (a flag the engine refuses) rolls back to model-b.
    bad = {"model": "model-c", "engine_args": ["--no-such-flag"]}
    assert httpx.post(api + "/model", json=bad).status_code == 202
    st = wait_until(lambda: _swap_ended(api), timeout=20, what="swap rolled back")
    assert (st["swap"]["state"], st["swap"]["reason"]) == ("rolled-back", "BadArguments")
    assert "unrecognized arguments" in st["swap"]["detail"]
    assert (st["model"], st["models"]) == ("model-b", ["model-b"])
    wait_until(lambda: _chat(router, "model-b") == 200, timeout=5, what="model-b back")
    assert _chat(router, "model-c") == 404  # never served, no babysitter names it: unknown
    metrics = httpx.get(api + "/metrics").text
    assert 'llmsvc_babysitter_engine_up{model_name="model-b"} 1.0' in metrics
    assert 'llmsvc_babysitter_engine_up{model_name="model-a"} 0.0' in metrics


def test_swap_without_rollback_stays_failed(spawn: Spawn) -> None:
    _, _, api = start_babysitter(spawn, None, "norollback", model="model-a")
    bad = {"model": "model-c", "engine_args": ["--no-such-flag"], "rollback": False}
    assert httpx.post(api + "/model", json=bad).status_code == 202

    def failed() -> dict[str, Any] | None:
        st = status(api)
        return st if st["state"] == "failed" else None

    st = wait_until(failed, timeout=20, what="failed")
    assert (st["swap"]["state"], st["model"]) == ("failed", "model-c")
    # POST /model again, with arguments the engine takes, recovers it.
    good = {"model": "model-d", "engine_args": ["--time-scale", "0"]}
    assert httpx.post(api + "/model", json=good).status_code == 202
    st = wait_until(lambda: _swap_ended(api), timeout=20, what="swap done")
    assert st["models"] == ["model-d"]


BAD_BODIES = [
    (b"", None),
    (b"not json", None),
    (b"[1]", None),
    (b"{}", "model"),
    (b'{"model": 5}', "model"),
    (b'{"model": ""}', "model"),
    (b'{"model": "x", "rollback": "maybe"}', "rollback"),
    (b'{"model": "x", "engine_args": "--a"}', "engine_args"),
    (b'{"model": "x", "colour": "red"}', "colour"),
]


async def test_bad_swap_bodies_are_400(aiohttp_client: Client) -> None:
    settings = BabysitterSettings(
        engine="sim", model="m", port=free_port(pair=True), stop_timeout=5
    )
    app = create_app(settings, engine_args=["--startup-delay", "100"], registry=CollectorRegistry())
    client = await aiohttp_client(app)
    for body, param in BAD_BODIES:
        resp = await client.post("/model", data=body, headers={"Content-Type": "application/json"})
        assert resp.status == 400, (body, await resp.text())
        error = (await resp.json())["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["param"] == param, body
    assert (await (await client.get("/status")).json())["swap"] is None
    assert (await client.get("/model")).status == 405
    await client.close()
