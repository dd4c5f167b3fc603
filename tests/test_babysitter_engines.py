"""Pure tests of the engine adapters, the naming rules and the restart policy."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from llmsvc.babysitter.engines import (
    EngineConfigError,
    build_engine,
    default_model_name,
    identity,
)
from llmsvc.babysitter.lifecycle import ExitRecord, Reason, RestartBudget, backoff_delay
from llmsvc.babysitter.probes import count_in_flight
from llmsvc.babysitter.settings import BabysitterSettings


def settings(**values: Any) -> BabysitterSettings:
    return BabysitterSettings(**{"port": 8000, **values})


def test_vllm_command_line_and_env() -> None:
    spec = build_engine(
        settings(engine="vllm", model="/models/Qwen/Qwen3-8B/", gpus="0,1"),
        ["--max-model-len", "4096"],
    )
    assert spec.argv == (
        "vllm", "serve", "/models/Qwen/Qwen3-8B/", "--host", "127.0.0.1", "--port", "8000",
        "--served-model-name", "Qwen3-8B", "--tensor-parallel-size", "2",
        "--max-model-len", "4096",
    )  # fmt: skip
    assert spec.env == {"CUDA_VISIBLE_DEVICES": "0,1"}
    assert spec.health_path == "/health"
    assert spec.models_paths[0] == "/v1/models"


def test_vllm_without_gpus_has_no_tp_and_no_env() -> None:
    spec = build_engine(settings(engine="vllm", model="org/m", model_name="m2"), [])
    assert "--tensor-parallel-size" not in spec.argv
    assert spec.argv[spec.argv.index("--served-model-name") + 1] == "m2"
    assert spec.env == {}


def test_sglang_uses_python3_from_path() -> None:
    spec = build_engine(
        settings(engine="sglang", model="/m/llama", gpus="3"), ["--mem-fraction-static", "0.8"]
    )
    assert spec.argv == (
        "python3", "-m", "sglang.launch_server", "--model-path", "/m/llama",
        "--host", "127.0.0.1", "--port", "8000", "--served-model-name", "llama",
        "--tp-size", "1", "--mem-fraction-static", "0.8",
    )  # fmt: skip
    assert spec.env == {"CUDA_VISIBLE_DEVICES": "3"}


def test_only_sglang_health_checks_get_more_than_the_default_second() -> None:
    # SGLang's /health runs a one-token generation and answers after 1-2 s when live.
    floors = {
        engine: build_engine(settings(engine=engine, model="/m/x"), []).health_timeout_floor
        for engine in ("vllm", "sglang", "llama.cpp", "infinilm", "sim")
    }
    assert floors == {"vllm": 0.0, "sglang": 3.0, "llama.cpp": 0.0, "infinilm": 0.0, "sim": 0.0}
    defaults = settings(engine="sim", model="m")
    assert (defaults.health_interval, defaults.health_timeout, defaults.hung_after) == (1, 1, 3)


def test_llama_cpp_offloads_only_with_gpus() -> None:
    plain = build_engine(settings(engine="llama.cpp", model="/m/Qwen3-F16.gguf"), [])
    assert plain.argv == (
        "llama-server", "-m", "/m/Qwen3-F16.gguf", "--host", "127.0.0.1", "--port", "8000",
        "--alias", "Qwen3-F16",
    )  # fmt: skip
    gpu = build_engine(settings(engine="llama.cpp", model="/m/x.gguf", gpus="0"), ["-c", "8192"])
    assert gpu.argv[-4:] == ("-ngl", "999", "-c", "8192")


def test_infinilm_python_server() -> None:
    spec = build_engine(
        settings(engine="infinilm", model="/data/9g_8b_thinking", gpus="1,2"),
        ["--dev", "metax", "--max-batch", "3"],
    )
    assert spec.argv == (
        "python3", "-m", "infinilm.server", "--model-path", "/data/9g_8b_thinking",
        "--host", "127.0.0.1", "--port", "8000", "--ndev", "2",
        "--dev", "metax", "--max-batch", "3",
    )  # fmt: skip
    assert spec.env == {"HPCC_VISIBLE_DEVICES": "1,2", "CUDA_VISIBLE_DEVICES": "1,2"}


def test_infinilm_rust_xtask_and_visible_devices_override() -> None:
    spec = build_engine(
        settings(
            engine="infinilm-rust",
            model="/cfg/qwen.toml",
            gpus="4",
            visible_devices_env="ASCEND_RT_VISIBLE_DEVICES",
        ),
        [],
    )
    assert spec.argv == ("xtask", "service", "/cfg/qwen.toml", "-p", "8000")
    assert spec.env == {"ASCEND_RT_VISIBLE_DEVICES": "4"}


def test_sim_runs_this_interpreter() -> None:
    spec = build_engine(
        settings(engine="sim", model="tiny", host="0.0.0.0"), ["--max-num-seqs", "4"]
    )
    assert spec.argv == (
        sys.executable, "-m", "llmsvc", "sim-engine", "--host", "0.0.0.0", "--port", "8000",
        "--model-name", "tiny", "--max-num-seqs", "4",
    )  # fmt: skip


def test_command_fills_placeholders_and_keeps_other_braces() -> None:
    spec = build_engine(
        settings(engine="command", model="/m/a", gpus="0"),
        ["srv", "--port={port}", "--bind", "{host}", "{model}", "{model_name}", '{"k": 1}'],
    )
    assert spec.argv == ("srv", "--port=8000", "--bind", "127.0.0.1", "/m/a", "a", '{"k": 1}')
    assert spec.env == {"CUDA_VISIBLE_DEVICES": "0"}


def test_command_needs_a_command_and_others_need_a_model() -> None:
    with pytest.raises(EngineConfigError, match="after '--'"):
        build_engine(settings(engine="command"), [])
    with pytest.raises(EngineConfigError, match="--model is required"):
        build_engine(settings(engine="vllm"), [])


@pytest.mark.parametrize(
    ("model", "name"),
    [
        ("/models/Qwen3-0.6B", "Qwen3-0.6B"),
        ("/models/Qwen3-0.6B/", "Qwen3-0.6B"),
        ("Qwen/Qwen3-8B", "Qwen3-8B"),
        ("/root/Qwen3-F16.gguf", "Qwen3-F16"),
        ("/cfg/service.toml", "service"),
        ("plain", "plain"),
        (None, None),
    ],
)
def test_default_model_name(model: str | None, name: str | None) -> None:
    assert default_model_name(model) == name


def test_identity_names_and_addresses() -> None:
    ident = identity(settings(engine="sim", model="/m/tiny", port=9000))
    assert ident.name == "tiny@127.0.0.1:9000"
    assert ident.engine_url() == "http://127.0.0.1:9000"
    assert ident.babysitter_url() == "http://127.0.0.1:9001"
    wild = identity(settings(engine="sim", model="m", host="0.0.0.0"), hostname=lambda: "node7")
    assert (wild.host, wild.probe_host, wild.name) == ("node7", "127.0.0.1", "m@node7:8000")
    adv = identity(
        settings(engine="sim", model="m", host="0.0.0.0", advertise_host="10.0.0.5", name="x")
    )
    assert (adv.host, adv.name) == ("10.0.0.5", "x")
    cmd = identity(settings(engine="command"))
    assert (cmd.model_name, cmd.name, cmd.label) == (None, "command@127.0.0.1:8000", cmd.name)


def test_backoff_doubles_caps_and_jitters() -> None:
    mid = lambda: 0.5  # noqa: E731 - no jitter at the midpoint
    assert [backoff_delay(n, 1.0, rand=mid) for n in range(0, 5)] == [0.05, 1.0, 2.0, 4.0, 8.0]
    assert backoff_delay(3, 0.0, rand=mid) == 0.05  # never a busy loop
    assert backoff_delay(10, 1.0, rand=mid) == 60.0
    assert backoff_delay(100, 1.0, rand=lambda: 1.0) == 60.0
    assert backoff_delay(1, 1.0, rand=lambda: 0.0) == pytest.approx(0.8)
    assert backoff_delay(1, 1.0, rand=lambda: 1.0) == pytest.approx(1.2)


def test_restart_budget_counts_within_the_window() -> None:
    now = [0.0]
    budget = RestartBudget(limit=2, window=10.0, clock=lambda: now[0])
    assert budget.record_failure()
    assert budget.record_failure()
    assert not budget.record_failure()
    now[0] = 30.0
    assert budget.record_failure()
    budget.reset()
    assert budget.record_failure() and budget.record_failure()


def test_exit_record_from_returncode() -> None:
    killed = ExitRecord.from_returncode(-9, Reason.SIGNALED)
    assert (killed.code, killed.signal, killed.exit_code()) == (None, 9, 137)
    assert "SIGKILL" in killed.detail
    exited = ExitRecord.from_returncode(3, Reason.EXITED, model="m")
    assert (exited.code, exited.signal, exited.exit_code()) == (3, None, 3)
    assert exited.as_json()["reason"] == "Exited"
    assert exited.as_json()["model"] == "m"
    assert exited.failure and not ExitRecord(None, None, Reason.SWAPPED).failure


def test_count_in_flight_from_vllm_metrics() -> None:
    text = (
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{model_name="m"} 2.0\n'
        "# TYPE vllm:num_requests_waiting gauge\n"
        'vllm:num_requests_waiting{model_name="m"} 3.0\n'
        "# TYPE other gauge\nother 7\n"
    )
    assert count_in_flight(text) == 5
    assert count_in_flight("# TYPE other gauge\nother 7\n") is None
    assert count_in_flight("not { prometheus") is None
    sglang = "# TYPE sglang:num_running_reqs gauge\nsglang:num_running_reqs 4\n"
    assert count_in_flight(sglang) == 4
