"""How an engine's end is told: return code, stderr, OOM counters (pure functions)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llmsvc.babysitter.classify import Ending, OomWatch, classify
from llmsvc.babysitter.lifecycle import Reason

VLLM_OOM = [
    "INFO 05-01 worker.py:180] Memory profiling takes 3.2 seconds",
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.",
]
SGLANG_CUDA = ["RuntimeError: CUDA error: device-side assert triggered", "Compile with ..."]
LLAMA_OOM = ["ggml_backend_cuda_buffer_type_alloc_buffer: allocating 9000 MiB on device 0: "
             "cudaMalloc failed: out of memory"]  # fmt: skip
LLAMA_USAGE = ["error: invalid argument: --bogus", "usage: llama-server [options]"]


@pytest.mark.parametrize(
    ("returncode", "uptime", "stderr", "oom", "reason", "detail"),
    [
        (-9, 30.0, [], 1, Reason.OOM_KILLED, "killed by SIGKILL after an out-of-memory kill"),
        (-9, 30.0, [], 0, Reason.SIGNALED, "killed by SIGKILL"),
        (-15, 1.0, ["usage: x"], 0, Reason.SIGNALED, "killed by SIGTERM"),
        (1, 40.0, VLLM_OOM, 0, Reason.GPU_OUT_OF_MEMORY, VLLM_OOM[1]),
        (-6, 40.0, SGLANG_CUDA, 0, Reason.CUDA_ERROR, SGLANG_CUDA[0]),
        (1, 9.0, LLAMA_OOM, 0, Reason.GPU_OUT_OF_MEMORY, LLAMA_OOM[0]),
        (1, 9.0, ["java.lang.OutOfMemoryError: heap"], 0, Reason.EXITED, "exited with code 1"),
        (1, 2.0, LLAMA_USAGE, 0, Reason.BAD_ARGUMENTS, LLAMA_USAGE[1]),
        (1, 300.0, LLAMA_USAGE, 0, Reason.EXITED, "exited with code 1"),  # too late for bad flags
        (0, 2.0, LLAMA_USAGE, 0, Reason.EXITED, "exited with code 0"),
        (3, 5.0, ["Traceback", "ValueError: no"], 0, Reason.EXITED, "exited with code 3"),
    ],
)
def test_classify(
    returncode: int, uptime: float, stderr: list[str], oom: int, reason: Reason, detail: str
) -> None:
    assert classify(Ending(returncode, uptime, stderr, oom)) == (reason, detail)


def test_oom_watch_counts_nothing_for_a_healthy_process() -> None:
    watch = OomWatch(os.getpid())
    assert watch.kills() == 0


def test_oom_watch_trusts_the_cgroup_over_the_kernel_wide_count(tmp_path: Path) -> None:
    """An OOM kill elsewhere on the host (the kernel's count rose, the engine's cgroup's did
    not) is not the engine's: a SIGKILL then reads Signaled, not OOMKilled."""
    cgroup, vmstat = tmp_path / "memory.oom_control", tmp_path / "vmstat"
    cgroup.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    vmstat.write_text("nr_free_pages 1\noom_kill 9\n")
    watch = OomWatch(os.getpid(), files=[cgroup, vmstat])
    vmstat.write_text("nr_free_pages 1\noom_kill 10\n")
    assert watch.kills() == 0
    cgroup.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    assert watch.kills() == 1


def test_oom_watch_falls_back_to_the_kernel_count_without_a_cgroup(tmp_path: Path) -> None:
    vmstat = tmp_path / "vmstat"
    vmstat.write_text("oom_kill 3\n")
    watch = OomWatch(os.getpid(), files=[tmp_path / "absent", vmstat])
    vmstat.write_text("oom_kill 4\n")
    assert watch.kills() == 1
