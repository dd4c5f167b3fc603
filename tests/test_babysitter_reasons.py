"""Every exit reason, produced by a real child process that does the thing.

The stand-in ``standins/failing_engine.py`` prints what PyTorch and vLLM print on a
CUDA out-of-memory or a CUDA error, exits with a code, or allocates until the
kernel's OOM killer ends it (in a memory-limited cgroup, when this machine lets a
test make one). ``--max-restarts 0`` turns the first failure into ``crash-loop``, so
each test reads one classified exit.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from procs import (
    HOST,
    STANDINS,
    Spawn,
    babysitter_flags,
    free_port,
    llmsvc_args,
    spawn_babysitter,
    wait_state,
)

ENGINE = [sys.executable, str(STANDINS / "failing_engine.py")]


def _fails_with(spawn: Spawn, *engine: str, state: str = "crash-loop") -> dict[str, object]:
    _, _, api = spawn_babysitter(
        spawn, "--engine", "command", "--max-restarts", "0", "--", *ENGINE, *engine
    )
    return wait_state(api, state, timeout=15)


def test_cuda_out_of_memory_is_gpu_out_of_memory(spawn: Spawn) -> None:
    st = _fails_with(spawn, "gpu-oom")
    last = st["last_exit"]
    assert isinstance(last, dict)
    assert (last["reason"], last["code"]) == ("GPUOutOfMemory", 1)
    assert "torch.OutOfMemoryError: CUDA out of memory" in last["detail"]
    tail = st["stderr_tail"]
    assert isinstance(tail, list)
    assert tail[0] == "INFO loading weights"
    assert "stand-in engine: gpu-oom" not in tail  # stdout is not stderr


def test_cuda_error(spawn: Spawn) -> None:
    last = _fails_with(spawn, "cuda-error")["last_exit"]
    assert isinstance(last, dict)
    assert last["reason"] == "CUDAError"
    assert last["detail"] == "RuntimeError: CUDA error: an illegal memory access was encountered"


def test_exit_code_is_exited_and_a_metric_label(spawn: Spawn) -> None:
    _, _, api = spawn_babysitter(
        spawn, "--engine", "command", "--max-restarts", "1", "--", *ENGINE, "exit", "7"
    )
    st = wait_state(api, "crash-loop", timeout=15)
    assert (st["last_exit"]["reason"], st["last_exit"]["code"]) == ("Exited", 7)
    assert st["restarts"] == 1
    assert st["stderr_tail"][-1] == "stand-in engine: giving up with 7"
    metrics = httpx.get(api + "/metrics").text
    label = 'model_name="command@127.0.0.1:{port}"'.format(port=int(api.rsplit(":", 1)[1]) - 1)
    assert f'llmsvc_babysitter_restarts_total{{{label},reason="Exited"}} 1.0' in metrics
    assert f'llmsvc_babysitter_engine_exits_total{{{label},reason="Exited"}} 2.0' in metrics
    assert f'llmsvc_babysitter_state{{{label},state="crash-loop"}} 1.0' in metrics


def test_usage_message_is_bad_arguments_and_not_restarted(spawn: Spawn) -> None:
    # The real sim engine, given a flag it does not know: argparse's usage and exit 2.
    _, _, api = spawn_babysitter(
        spawn, "--engine", "sim", "--model", "m", "--max-restarts", "5", "--", "--no-such-flag"
    )
    st = wait_state(api, "failed", timeout=15)
    assert st["last_exit"]["reason"] == "BadArguments"
    assert st["last_exit"]["code"] == 2
    assert "unrecognized arguments: --no-such-flag" in st["last_exit"]["detail"]
    assert st["restarts"] == 0  # a restart cannot mend a bad command line
    assert any(line.startswith("usage:") for line in st["stderr_tail"])


def test_preflight_refuses_without_enough_host_memory(spawn: Spawn) -> None:
    proc, _, api = spawn_babysitter(
        spawn, "--engine", "sim", "--model", "m", "--min-free-mem", "100000", "--max-restarts", "1"
    )
    st = wait_state(api, "crash-loop", timeout=15)
    assert st["pid"] is None
    assert st["last_exit"]["reason"] == "PreflightFailed"
    assert "host memory" in st["last_exit"]["detail"]
    assert "100000.00 GiB needed" in st["last_exit"]["detail"]
    assert st["preflight"]["ok"] is False
    assert "sim-engine" not in proc.log()  # never launched
    assert "preflight failed" in proc.log()


# ---- the kernel's OOM killer ------------------------------------------------------------


def _memory_cgroup() -> Path | None:
    """This process's cgroup v1 memory directory, when a test may make children in it."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            base = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            if base.is_dir() and os.access(base, os.W_OK):
                return base
    return None


@pytest.fixture
def small_cgroup() -> Iterator[Path]:
    """A child memory cgroup limited to 400 MiB, or a skip saying why there is none."""
    base = _memory_cgroup()
    if base is None:
        pytest.skip(
            "no writable cgroup v1 memory controller here: the kernel OOM path cannot be shown "
            "on this machine (classification itself is tested in test_babysitter_classify.py)"
        )
    group = base / f"llmsvc-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(400 << 20))
        yield group
    finally:
        for _ in range(100):  # the processes leave it when the spawn fixture stops them
            with contextlib.suppress(OSError):
                group.rmdir()
                break
            time.sleep(0.1)


def test_kernel_oom_kill_is_oom_killed(spawn: Spawn, small_cgroup: Path) -> None:
    port = free_port(pair=True)
    babysitter = llmsvc_args(
        "babysitter", "--port", str(port), *babysitter_flags(),
        "--engine", "command", "--max-restarts", "0",
        "--min-free-mem", "0",  # the cgroup holds less than preflight's default 1 GiB
        "--", *ENGINE, "allocate",
    )  # fmt: skip
    # The babysitter joins the limited cgroup, so its engine is born there (as in a pod).
    script = f'echo $$ > {small_cgroup}/cgroup.procs && exec "$@"'
    proc = spawn("babysitter", "sh", "-c", script, "sh", *babysitter, raw=True)
    api = f"http://{HOST}:{port + 1}"
    try:
        st = wait_state(api, "crash-loop", timeout=30)
    finally:
        proc.stop()  # out of the cgroup before the fixture removes it
    assert st["last_exit"]["reason"] == "OOMKilled"
    assert st["last_exit"]["signal"] == 9
    assert st["stderr_tail"] == ["allocating until the OOM killer comes"]
