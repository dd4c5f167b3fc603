"""Preflight: free host and GPU memory checked before each launch (``nvidia-smi`` stand-in)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from llmsvc.babysitter import preflight
from llmsvc.babysitter.gpus import parse_smi
from llmsvc.babysitter.preflight import free_host_memory, gpu_fraction
from procs import Spawn, spawn_babysitter, standin_env, status, wait_until


def test_too_little_gpu_memory_refuses_then_launches_when_freed(
    spawn: Spawn, tmp_path: Path
) -> None:
    gpus = tmp_path / "gpus.csv"
    gpus.write_text("0, 80000, 81559\n1, 1024, 81559\n")
    env = {**standin_env(tmp_path / "record"), "LLMSVC_STANDIN_GPUS": str(gpus)}
    proc, _, api = spawn_babysitter(
        spawn, "--engine", "sim", "--model", "m", "--gpus", "1", "--min-free-gpu-mem", "2",
        "--gpu-probe", "nvidia-smi", "--restart-backoff", "0.2", "--max-restarts", "100",
        env=env,
    )  # fmt: skip

    def refused() -> dict[str, Any] | None:
        st = status(api)
        return st if st["last_exit"] else None

    proc.wait_http(api + "/status")
    st = wait_until(refused, timeout=10, what="preflight refused")
    assert st["last_exit"]["reason"] == "PreflightFailed"
    assert st["last_exit"]["detail"] == "GPU 1: 1.00 GiB free, 2.00 GiB needed"
    assert [c["what"] for c in st["preflight"]["checks"]] == ["host memory", "GPU 1"]
    assert st["pid"] is None
    gpus.write_text("0, 80000, 81559\n1, 40000, 81559\n")  # someone freed GPU 1
    proc.wait_http(api + "/health", timeout=15)
    st = status(api)
    assert st["preflight"]["ok"] is True
    assert st["preflight"]["checks"][1] == {"what": "GPU 1", "free_gib": 39.062, "need_gib": 2.0}
    metrics = httpx.get(api + "/metrics").text
    assert (
        'llmsvc_babysitter_engine_exits_total{model_name="m",reason="PreflightFailed"}' in metrics
    )

    # A swap waits for the GPU memory of the old engine before it launches the new one.
    assert httpx.post(api + "/model", json={"model": "m2"}).status_code == 202
    wait_until(lambda: status(api)["models"] == ["m2"], timeout=15, what="swapped")
    assert "old engine released: GPU memory released: GPU 1 39.1 GiB free" in proc.log()


def test_without_nvidia_smi_the_gpu_check_is_skipped_with_a_note(spawn: Spawn) -> None:
    proc, _, api = spawn_babysitter(
        spawn, "--engine", "sim", "--model", "m", "--min-free-gpu-mem", "1",
        "--gpu-probe", "nvidia-smi", env={"PATH": "/nonexistent"},
    )  # fmt: skip
    proc.wait_http(api + "/health")
    notes = status(api)["preflight"]["notes"]
    assert notes == ["no GPU visible (neither NVML nor nvidia-smi); GPU check skipped"]


def test_parse_smi_and_host_memory() -> None:
    gpus = parse_smi("0, 1024, 81559\n1, 2048.5, 81559\n\n")
    assert gpus is not None
    assert [(g.index, g.free_bytes) for g in gpus] == [("0", 1 << 30), ("1", int(2048.5 * 2**20))]
    assert parse_smi("[N/A], [N/A], 100\n") is None
    free = free_host_memory()
    assert free is not None and free > 0


def test_by_default_vllm_needs_its_gpu_memory_utilization_of_each_gpu(
    spawn: Spawn, tmp_path: Path
) -> None:
    """No preflight flag: 1 GiB of host memory, and vLLM's default 0.9 of GPU 0's memory."""
    gpus = tmp_path / "gpus.csv"
    gpus.write_text("0, 40000, 81559\n")
    env = {**standin_env(tmp_path / "record"), "LLMSVC_STANDIN_GPUS": str(gpus)}
    proc, _, api = spawn_babysitter(
        spawn, "--engine", "vllm", "--model", "m", "--gpus", "0", "--gpu-probe", "nvidia-smi",
        "--max-restarts", "100", env=env,
    )  # fmt: skip
    proc.wait_http(api + "/status")
    st = wait_until(lambda: status(api)["last_exit"], timeout=10, what="preflight refused")
    assert st["reason"] == "PreflightFailed"
    assert st["detail"] == "GPU 0: 39.06 GiB free, 71.68 GiB needed"
    check = status(api)["preflight"]
    assert check["checks"][0]["what"] == "host memory"
    assert check["checks"][0]["need_gib"] == 1.0
    assert check["notes"] == [
        "GPU memory needed: vllm's default --gpu-memory-utilization 0.9 of each GPU"
    ]
    gpus.write_text("0, 80000, 81559\n")  # the other tenant left
    proc.wait_http(api + "/health", timeout=15)


def test_the_engine_flag_sets_the_gpu_need_and_no_preflight_skips_it(
    spawn: Spawn, tmp_path: Path
) -> None:
    gpus = tmp_path / "gpus.csv"
    gpus.write_text("0, 40000, 81559\n")
    env = {**standin_env(tmp_path / "record"), "LLMSVC_STANDIN_GPUS": str(gpus)}
    proc, _, api = spawn_babysitter(
        spawn, "--engine", "vllm", "--model", "m", "--gpu-probe", "nvidia-smi",
        "--", "--gpu-memory-utilization", "0.4", env=env,
    )  # fmt: skip
    proc.wait_http(api + "/health", timeout=15)
    assert status(api)["preflight"]["checks"][1] == {
        "what": "GPU 0", "free_gib": 39.062, "need_gib": 31.86,
    }  # fmt: skip
    off, _, off_api = spawn_babysitter(
        spawn, "--engine", "vllm", "--model", "m", "--gpu-probe", "nvidia-smi",
        "--no-preflight", "--min-free-mem", "100000", env=env, name="off",
    )  # fmt: skip
    off.wait_http(off_api + "/health", timeout=15)
    check = status(off_api)["preflight"]
    assert check["checks"] == [] and check["notes"] == ["preflight is off (--no-preflight)"]


def test_gpu_fraction_from_the_command_line() -> None:
    assert gpu_fraction("vllm", ["vllm", "serve", "m"]) == (
        0.9, "vllm's default --gpu-memory-utilization 0.9",
    )  # fmt: skip
    assert gpu_fraction("vllm", ["--gpu-memory-utilization=0.5"]) == (
        0.5, "vllm --gpu-memory-utilization 0.5",
    )  # fmt: skip
    assert gpu_fraction("sglang", ["--mem-fraction-static", "0.8"]) == (
        0.8, "sglang --mem-fraction-static 0.8",
    )  # fmt: skip
    assert gpu_fraction("sglang", []) is None
    assert gpu_fraction("llama.cpp", ["-ngl", "999"]) is None
    assert gpu_fraction("vllm", ["--gpu-memory-utilization", "lots"]) is None


def test_default_host_need_is_1_gib_or_a_quarter_of_a_small_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limits: dict[int, int | None] = {1: None, 2: 64 * 1024**3, 3: 512 * 1024**2}
    monkeypatch.setattr(preflight, "memory_limit", lambda pid: limits[pid])
    assert [preflight.default_host_need(pid) for pid in (1, 2, 3)] == [1.0, 1.0, 0.125]
