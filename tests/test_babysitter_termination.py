"""On Kubernetes: the reason in the termination message, and exit 1 when restarts stop."""

from __future__ import annotations

import sys
from pathlib import Path

from standins.babysitting import STANDINS, Spawn, start_babysitter, status, wait_state

FAILING = str(STANDINS / "failing_engine.py")


def test_crash_loop_writes_the_reason_and_exits_1(spawn: Spawn, tmp_path: Path) -> None:
    log = tmp_path / "termination-log"
    proc, _, _ = start_babysitter(
        spawn, "--engine", "command", "--max-restarts", "1", "--termination-log", str(log),
        "--exit-on-crash-loop", "--", sys.executable, FAILING, "gpu-oom",
    )  # fmt: skip
    assert proc.popen.wait(20) == 1
    text = log.read_text()
    assert text.startswith("GPUOutOfMemory: "), text
    assert "crash loop" in text
    assert "exiting (--exit-on-crash-loop)" in proc.log()


def test_without_the_flag_it_waits_in_crash_loop(spawn: Spawn, tmp_path: Path) -> None:
    log = tmp_path / "termination-log"
    proc, _, api = start_babysitter(
        spawn, "--engine", "command", "--max-restarts", "0", "--termination-log", str(log),
        "--", sys.executable, FAILING, "exit", "3",
    )  # fmt: skip
    proc.wait_http(api + "/status")
    wait_state(api, "crash-loop", timeout=15)
    assert proc.alive()
    assert log.read_text().startswith("Exited: ")
    assert status(api)["last_exit"]["code"] == 3
