"""Standby with the real llama-server: a babysitter with ``--idle-timeout 1 --standby stop``
stops the idle engine (seen idle from llama.cpp's own ``/metrics``, which the babysitter
turns on: the server gets no ``--metrics`` from the test), keeps its record as ``standby``,
and on ``POST /wake`` starts it again; a completion then succeeds. Needs ``make real-engine``.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from procs import (
    Spawn,
    pid_alive,
    start_registry,
    status,
    wait_state,
    wait_until,
)
from realengine import MARKS, MODEL_NAME, spawn_llama_babysitter

pytestmark = list(MARKS)

TOKEN = "real-engine-standby-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NO_METRICS_FLAG = ("-c", "2048", "-np", "2")


def test_llama_server_goes_to_standby_and_wakes(
    real_engine_slot: None, spawn: Spawn, llama_server_bin: Path, smollm2_gguf: Path
) -> None:
    _, registry = start_registry(spawn, token=TOKEN)
    _, port, api = spawn_llama_babysitter(
        spawn, llama_server_bin, smollm2_gguf, "--registry", registry,
        "--idle-timeout", "1", "--standby", "stop",
        engine_args=NO_METRICS_FLAG, env={"LLMSVC_REGISTRY_TOKEN": TOKEN},
    )  # fmt: skip
    name = f"{MODEL_NAME}@127.0.0.1:{port}"
    engine = f"http://127.0.0.1:{port}"
    ready = wait_state(api, "ready", timeout=120)
    first = ready["pid"]
    assert httpx.get(engine + "/metrics", timeout=10).status_code == 200  # turned on for us

    wait_state(api, "standby", timeout=60)
    wait_until(lambda: status(api)["pid"] is None, timeout=30, what="llama-server stopped")
    assert not pid_alive(first)
    record = httpx.get(f"{registry}/services/{name}", headers=AUTH, timeout=5).json()
    assert record["status"] == "standby"

    assert httpx.post(api + "/wake", timeout=10).status_code == 401  # the registry token
    woke = httpx.post(api + "/wake", headers=AUTH, timeout=10)
    assert woke.status_code == 202 and woke.json() == {"state": "waking"}
    back = wait_state(api, "ready", timeout=120)
    assert back["pid"] != first and back["standby"]["wakes"] == 1
    resp = httpx.post(
        engine + "/v1/chat/completions",
        json={
            "model": MODEL_NAME,
            "messages": [{"role": "user", "content": "Say hi."}],
            "max_tokens": 8,
        },
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] is not None
