"""Every engine adapter, really launched: stand-ins record their argv, then serve as sim engine."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from procs import Spawn, spawn_babysitter, standin_env, status

CASES = [
    # engine, --model, extra flags, engine args, the model served, argv the engine got (prefix)
    pytest.param(
        "vllm", "/models/Qwen3-8B", ["--gpus", "0,1"], ["--max-model-len", "2048"], "Qwen3-8B",
        ["serve", "/models/Qwen3-8B", "--host", "127.0.0.1"],
        {"CUDA_VISIBLE_DEVICES": "0,1"},
        id="vllm",
    ),
    pytest.param(
        "sglang", "/models/llama", ["--model-name", "chat"], [], "chat",
        ["-m", "sglang.launch_server", "--model-path", "/models/llama"],
        {},
        id="sglang",
    ),
    pytest.param(
        "llama.cpp", "/m/Qwen3-F16.gguf", ["--gpus", "2"], ["-c", "4096"], "Qwen3-F16",
        ["-m", "/m/Qwen3-F16.gguf", "--host", "127.0.0.1"],
        {"CUDA_VISIBLE_DEVICES": "2"},
        id="llama.cpp",
    ),
    pytest.param(
        "infinilm", "/data/9g_8b_thinking", ["--gpus", "1"], ["--dev", "metax"], "9g_8b_thinking",
        ["-m", "infinilm.server", "--model-path", "/data/9g_8b_thinking"],
        {"CUDA_VISIBLE_DEVICES": "1", "HPCC_VISIBLE_DEVICES": "1"},
        id="infinilm",
    ),
    pytest.param(
        "infinilm-rust", "/cfg/qwen-svc.toml", ["--gpus", "3", "--visible-devices-env",
        "HPCC_VISIBLE_DEVICES"], [], "qwen-svc",
        ["service", "/cfg/qwen-svc.toml", "-p"],
        {"HPCC_VISIBLE_DEVICES": "3"},
        id="infinilm-rust",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("engine", "model", "flags", "extra", "served", "argv", "env"), CASES)
def test_adapter_launches_and_serves(
    spawn: Spawn,
    tmp_path: Path,
    engine: str,
    model: str,
    flags: list[str],
    extra: list[str],
    served: str,
    argv: list[str],
    env: dict[str, str],
) -> None:
    record = tmp_path / "argv.jsonl"
    args = ["--engine", engine, "--model", model, *flags, *(["--", *extra] if extra else [])]
    proc, port, api = spawn_babysitter(spawn, *args, env=standin_env(record))
    proc.wait_http(api + "/health")
    st = status(api)
    assert st["models"] == [served]
    assert httpx.get(api + "/models").json()["data"][0]["id"] == served
    got = json.loads(record.read_text().splitlines()[0])
    assert got["engine"] == engine
    joined = " ".join(got["orig_argv"])
    assert " ".join(argv) in joined
    assert str(port) in got["argv"]
    assert " ".join(extra) in joined
    assert got["env"] == env
    # The engine really serves the model it was told to.
    resp = httpx.post(
        f"http://127.0.0.1:{port}/v1/completions",
        json={"model": served, "prompt": "hi", "max_tokens": 2},
        timeout=10,
    )
    assert resp.status_code == 200


def test_command_engine_fills_in_the_port(spawn: Spawn, tmp_path: Path) -> None:
    record = tmp_path / "argv.jsonl"
    proc, port, api = spawn_babysitter(
        spawn, "--engine", "command", "--model", "/m/cmd-model", "--",
        "vllm", "serve", "{model}", "--port", "{port}", "--served-model-name", "{model_name}",
        env=standin_env(record),
    )  # fmt: skip
    proc.wait_http(api + "/health")
    got = json.loads(record.read_text().splitlines()[0])
    assert got["argv"] == ["serve", "/m/cmd-model", "--port", str(port), "--served-model-name",
                           "cmd-model"]  # fmt: skip
    assert status(api)["models"] == ["cmd-model"]
