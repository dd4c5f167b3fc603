"""Two models on one GPU take turns: each babysitter has ``--gpus 0 --idle-timeout 1
--standby stop``; requests for A, then B, then A through a router each wake their model
while the other goes to standby, and the two engines are never up at the same time (the
per-GPU lock: a start waits until the other engine's process is gone).

Real processes: a registry, a router, two babysitters of sim engines (the GPU is a name
here: ``--gpu-probe off``).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from procs import Spawn, port_busy, spawn_babysitter, start_registry, start_router, status

SAMPLE = 0.02  # seconds between two looks at both engine ports


def test_two_models_on_one_gpu_swap_in_turn(spawn: Spawn, tmp_path: Path) -> None:
    _, registry = start_registry(spawn)
    _, router = start_router(spawn, registry, "--hold-timeout", "40")
    ports: dict[str, int] = {}
    apis: dict[str, str] = {}
    for model in ("a", "b"):
        _, port, api = spawn_babysitter(
            spawn, "--engine", "sim", "--model", model, "--registry", registry,
            "--gpus", "0", "--gpu-probe", "off", "--gpu-lock-dir", str(tmp_path / "locks"),
            "--idle-timeout", "1", "--standby", "stop",
            "--", "--time-scale", "0",
            name=f"sitter-{model}",
        )  # fmt: skip
        ports[model], apis[model] = port, api

    overlaps: list[float] = []
    seen_up: set[str] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            up = {m for m, p in ports.items() if port_busy(p)}
            seen_up.update(up)
            if len(up) > 1:
                overlaps.append(time.monotonic())
            done.wait(SAMPLE)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        # Both start at once: one waits for the GPU, runs after the other went to standby.
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            states = {m: _state(api) for m, api in apis.items()}
            if set(states.values()) == {"standby"}:
                break
            time.sleep(0.2)
        assert set(states.values()) == {"standby"}, states
        assert seen_up == {"a", "b"}
        served = []
        for model in ("a", "b", "a"):
            resp = httpx.post(
                f"{router}/v1/completions",
                json={"model": model, "prompt": "hi", "max_tokens": 2},
                timeout=60,
            )
            assert resp.status_code == 200, resp.text
            served.append(resp.json()["model"])
        assert served == ["a", "b", "a"]
        wakes = {m: status(api)["standby"]["wakes"] for m, api in apis.items()}
        assert wakes == {"a": 2, "b": 1}  # each request woke its model, once
    finally:
        done.set()
        watcher.join(timeout=5)
    assert not overlaps, f"both engines were up at once {len(overlaps)} times"


def _state(api: str) -> str | None:
    try:
        return str(status(api)["state"])
    except httpx.HTTPError:
        return None
