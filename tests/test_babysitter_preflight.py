"""Preflight: free host and GPU memory checked before each launch (``nvidia-smi`` stand-in)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from llmsvc.babysitter.gpus import parse_smi
from llmsvc.babysitter.preflight import free_host_memory
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
