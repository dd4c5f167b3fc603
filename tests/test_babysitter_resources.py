"""The babysitter's resource series: its GPUs (a stand-in ``nvidia-smi``) and its engine's
host memory (the real sim engine's process group), on ``/metrics``."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from llmsvc.babysitter import resources
from llmsvc.babysitter.gpus import parse_smi
from procs import Spawn, spawn_babysitter, standin_env, wait_until

MIB = 1024 * 1024
NO_GPUS = 'llmsvc_babysitter_gpus_visible{source="none"}'


def series(api: str) -> dict[str, float]:
    """``name{labels}`` → value of the babysitter's resource series."""
    out = {}
    for line in httpx.get(api + "/metrics").text.splitlines():
        if line.startswith(("llmsvc_babysitter_gpu", "llmsvc_babysitter_engine_memory")):
            key, value = line.rsplit(" ", 1)
            key = re.sub(r'model_name="m",?', "", key).replace(",}", "}").replace("{}", "")
            out[key] = float(value)
    return out


def when(seen: dict[str, float], key: str, ok: Callable[[float], bool]) -> dict[str, float] | None:
    """``seen`` once its ``key`` is there and ``ok``."""
    return seen if key in seen and ok(seen[key]) else None


def test_gpu_readings_and_engine_memory_are_exported(spawn: Spawn, tmp_path: Path) -> None:
    gpus = tmp_path / "gpus.csv"
    gpus.write_text("0, 20000, 81559, 37, 61\n1, 80000, 81559, [N/A], [N/A]\n2, 1, 2, 3, 4\n")
    env = {**standin_env(tmp_path / "record"), "LLMSVC_STANDIN_GPUS": str(gpus)}
    proc, _, api = spawn_babysitter(
        spawn, "--engine", "sim", "--model", "m", "--gpus", "0,1", "--gpu-probe", "nvidia-smi",
        "--resource-interval", "0.2", env=env,
    )  # fmt: skip
    proc.wait_http(api + "/health", timeout=20)
    seen = wait_until(
        lambda: when(series(api), "llmsvc_babysitter_engine_memory_rss_bytes", lambda v: v > 0),
        timeout=10,
        what="engine memory sampled",
    )
    assert seen['llmsvc_babysitter_gpus_visible{source="nvidia-smi"}'] == 2, seen
    assert seen['llmsvc_babysitter_gpu_memory_used_bytes{gpu="0"}'] == 61559 * MIB
    assert seen['llmsvc_babysitter_gpu_memory_total_bytes{gpu="0"}'] == 81559 * MIB
    assert seen['llmsvc_babysitter_gpu_utilization_ratio{gpu="0"}'] == 0.37
    assert seen['llmsvc_babysitter_gpu_temperature_celsius{gpu="0"}'] == 61
    assert seen['llmsvc_babysitter_gpu_memory_used_bytes{gpu="1"}'] == 1559 * MIB
    # GPU 1 does not report utilization or temperature, GPU 2 is not this engine's: absent.
    assert not [k for k in seen if 'gpu="2"' in k]
    assert 'llmsvc_babysitter_gpu_utilization_ratio{gpu="1"}' not in seen
    assert 'llmsvc_babysitter_gpu_temperature_celsius{gpu="1"}' not in seen
    # The sim engine is a Python process: tens of MiB resident, all of its group's.
    assert seen["llmsvc_babysitter_engine_memory_rss_bytes"] > 10 * MIB

    gpus.unlink()  # the driver went away: no GPU is reported, none is guessed
    gone = wait_until(
        lambda: when(
            series(api), 'llmsvc_babysitter_gpus_visible{source="none"}', lambda v: v == 0
        ),
        timeout=10,
        what="GPUs reported absent",
    )
    assert not [k for k in gone if "gpu=" in k]


def test_group_rss_counts_the_whole_process_group() -> None:
    """A child of the group's leader that holds 64 MiB: counted, though not the leader."""
    script = "import os, time\nif os.fork() == 0:\n    b = b'x' * (64 << 20)\ntime.sleep(30)\n"
    child = subprocess.Popen(["python3", "-c", script], start_new_session=True)
    try:
        leader = Path(f"/proc/{child.pid}/statm")
        wait_until(
            lambda: (
                resources.group_rss(child.pid)
                > int(leader.read_text().split()[1]) * resources.PAGE + 60 * MIB
            ),
            timeout=10,
            what="the child's 64 MiB counted",
        )
    finally:
        os.killpg(child.pid, 9)
        child.wait()


def test_memory_limit_of_a_cgroup_v2_and_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc, cgroup = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "7").mkdir(parents=True)
    (proc / "7" / "cgroup").write_text("0::/system.slice/llmsvc-babysitter.service\n")
    unit = cgroup / "system.slice" / "llmsvc-babysitter.service"
    unit.mkdir(parents=True)
    (unit / "memory.max").write_text("3221225472\n")
    monkeypatch.setattr(resources, "PROC", proc)
    monkeypatch.setattr(resources, "CGROUP_ROOT", cgroup)
    assert resources.memory_limit(7) == 3 * 1024**3
    (unit / "memory.max").write_text("max\n")
    assert resources.memory_limit(7) is None
    assert resources.memory_limit(8) is None


def test_parse_smi_with_utilization_and_temperature() -> None:
    parsed = parse_smi("0, 1024, 2048, 55, 70\n1, 1024, 2048, [N/A], [N/A]\n")
    assert parsed is not None
    assert [(g.utilization_percent, g.temperature_celsius, g.used_bytes) for g in parsed] == [
        (55.0, 70.0, 1024 * MIB),
        (None, None, 1024 * MIB),
    ]
