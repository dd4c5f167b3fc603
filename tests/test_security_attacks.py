"""Issue 11's attacks replayed end to end against real processes.

Item 1: a record whose ``url`` carries a path and a query once aimed the router at a
babysitter's own API (``http://127.0.0.1:<babysitter>/drain?x=``: one chat request for
the record's model drained the babysitter) and at the registry
(``http://<registry>/services/<name>?x=``, which took a share of a real model's
traffic). Here a real registry, babysitter and router run, the attack's records are
sent, and the babysitter must stay registered and ready, serving its model; the same
record in a static services file stops the router at start with one line.
"""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path
from typing import Any

import httpx
import orjson

from procs import (
    HOST,
    Spawn,
    llmsvc_args,
    start_babysitter,
    start_registry,
    start_router,
    status,
    wait_until,
)

CHAT = "/v1/chat/completions"


def _chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def test_a_record_cannot_aim_the_router_at_a_babysitter_or_the_registry(spawn: Spawn) -> None:
    token = secrets.token_urlsafe(24)  # the attacker holds the write token, too
    auth = {"Authorization": f"Bearer {token}"}
    _, registry = start_registry(spawn, "--token", token)
    _, engine, api = start_babysitter(spawn, registry, "victim", "--registry-token", token)
    _, router = start_router(spawn, registry, "--registry-token", token)

    def served() -> bool:
        resp = httpx.post(router + CHAT, json=_chat("sim-model"), timeout=10)
        return resp.status_code == 200

    wait_until(served, timeout=30, what="the router to route to the engine")
    attacks = [
        ("pwn", f"{api}/drain?x="),  # the babysitter's own API
        ("pwn", f"{api}/model?x="),
        ("sim-model", f"{registry}/services/victim?x="),  # a real model's id
    ]
    for i, (model, url) in enumerate(attacks):
        record = {
            "name": f"x{i}",
            "host": HOST,
            "port": int(url.split(":")[2].split("/")[0]),
            "url": url,
            "type": "openai-api",
            "metadata": {"models": [model]},
        }
        resp = httpx.post(registry + "/services", json=record, headers=auth, timeout=10)
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["param"] == "url"

    # A chat request for the attack's model reaches nothing: no record serves it.
    resp = httpx.post(router + CHAT, json=_chat("pwn"), timeout=10)
    assert resp.status_code == 404, resp.text
    assert resp.json()["error"]["code"] == "model_not_found"
    models = httpx.get(router + "/v1/models", timeout=10).json()["data"]
    assert [m["id"] for m in models] == ["sim-model"]
    # The real model is still served by the engine alone, whose babysitter was not drained.
    for _ in range(4):
        resp = httpx.post(router + CHAT, json=_chat("sim-model"), timeout=10)
        assert resp.status_code == 200, resp.text
        assert resp.headers["X-Llmsvc-Backend"] == "victim"
    state = status(api)
    assert state["state"] == "ready", state
    assert state["registered"]["engine"], state
    listed = httpx.get(registry + "/services", headers=auth, timeout=10).json()["services"]
    assert {r["name"]: r["url"] for r in listed} == {"victim": engine, "victim-babysitter": api}


def test_a_static_record_with_a_path_stops_the_router(tmp_path: Path) -> None:
    static = tmp_path / "static.json"
    url = f"http://{HOST}:9/drain?x="
    record = {"name": "x", "host": HOST, "port": 9, "url": url, "metadata": {"models": ["pwn"]}}
    static.write_bytes(orjson.dumps([record]))
    run = subprocess.run(
        llmsvc_args("router", "--port", "1", "--static-services", str(static)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmsvc router: error:"), run.stderr
    assert "service #1" in lines[0] and "'url'" in lines[0] and "origin" in lines[0]
