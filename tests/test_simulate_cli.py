"""``llmsvc simulate`` as a user runs it: a real process, its report, its errors."""

from __future__ import annotations

import importlib.util
import json
import os
import pty
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llmsvc.simengine.profiles import load_profile
from procs import llmsvc_args

SMALL = ("--duration", "60", "--rate", "3", "--workers", "3", "--startup-delay", "10")


def simulate(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        llmsvc_args("simulate", *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def simulate_json(*args: str) -> dict[str, Any]:
    done = simulate(*SMALL, "--json", *args)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # not a terminal: no progress bar
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def test_the_same_arguments_give_the_same_bytes() -> None:
    args = (*SMALL, "--trace", "bursty", "--seed", "9", "--profile", "llama.cpp-smollm2-cpu")
    first, second = simulate(*args, "--json"), simulate(*args, "--json")
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    table = simulate(*args)
    assert table.returncode == 0, table.stderr
    assert "trace bursty:" in table.stdout and "autoscale-zero" in table.stdout


def test_the_report_compares_every_policy_by_default() -> None:
    data = simulate_json("--trace", "spike-from-zero")
    assert data["trace"]["name"] == "spike-from-zero"
    assert data["engine"]["startup_delay"] == 10.0
    rows = {row["policy"]: row for row in data["policies"]}
    assert list(rows) == ["fixed", "autoscale", "autoscale-zero", "standby"]
    assert rows["fixed"]["cold_starts"] == 0
    assert rows["fixed"]["gpu_seconds"] >= 3 * 60
    assert rows["autoscale-zero"]["cold_starts"] >= 1
    assert rows["autoscale-zero"]["ttft_s"]["p99"] >= 10.0
    assert rows["standby"]["wakes"] > 1  # the spike passes --wake-target 8 per engine
    for row in rows.values():
        assert row["answered"] + row["rejected"] == data["trace"]["requests"]


def test_wake_target_0_wakes_only_the_first_engine() -> None:
    data = simulate_json("--trace", "spike-from-zero", "--policy", "standby", "--wake-target", "0")
    assert [row["wakes"] for row in data["policies"]] == [1]
    assert data["standby"]["wake_target"] == 0


def test_a_profile_and_the_autoscale_flags_are_used() -> None:
    data = simulate_json(
        "--policy", "autoscale", "--profile", "llama.cpp-smollm2-cpu", "--target-requests", "2",
        "--scale-down-delay", "5", "--max-replicas", "2",
    )  # fmt: skip
    profile = load_profile("llama.cpp-smollm2-cpu")
    for field in ("max_num_seqs", "decode_tokens_per_s", "prefill_tokens_per_s", "step_noise"):
        assert data["engine"][field] == profile[field]
    assert data["autoscale"]["target_requests"] == 2
    assert data["autoscale"]["scale_down_delay"] == 5
    assert [row["max_replicas"] for row in data["policies"]] == [2]


def test_a_csv_trace(tmp_path: Path) -> None:
    path = tmp_path / "trace.csv"
    path.write_text("arrival_s,prompt_tokens,output_tokens\n0.5,100,10\n1.0,50,5\n")
    data = simulate_json("--trace", str(path), "--policy", "fixed")
    assert data["trace"]["requests"] == 2
    assert data["policies"][0]["answered"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--trace", "weekly"), "unknown trace 'weekly'"),
        (("--policy", "fixed,magic"), "unknown policy 'magic'"),
        (("--rate", "-2"), "--rate: Input should be greater than 0"),
        (("--profile", "no-such-profile"), "unknown profile 'no-such-profile'"),
        (("--workers", "0"), "--workers: Input should be greater than or equal to 1"),
        (("--wake-target", "-1"), "--wake-target: Input should be greater than or equal to 0"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: tuple[str, ...], message: str) -> None:
    done = simulate(*args)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("llmsvc simulate: error: ")
    assert message in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_a_bad_csv_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("arrival_s,prompt_tokens,output_tokens\n1,2,3\n2,many,3\n")
    done = simulate("--trace", str(path))
    assert done.returncode == 2
    assert done.stderr == (
        f"llmsvc simulate: error: {path} line 3: prompt_tokens is not an integer ('many')\n"
    )


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="no matplotlib")
def test_plots_are_written(tmp_path: Path) -> None:
    out = tmp_path / "plots"
    data = simulate_json("--policy", "fixed,autoscale-zero", "--plots", str(out))
    assert sorted(p.name for p in out.iterdir()) == ["replicas.png", "ttft.png"]
    assert data["plots"] == [str(out / "replicas.png"), str(out / "ttft.png")]
    for path in out.iterdir():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_without_matplotlib_are_one_line(tmp_path: Path) -> None:
    """A python where matplotlib cannot be found: refused before anything runs."""
    script = (
        "import importlib.util, sys; importlib.util.find_spec = lambda name, *a: None; "
        "from llmsvc.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, "simulate", "--plots", str(tmp_path / "p")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr == (
        "llmsvc simulate: error: --plots needs matplotlib: pip install 'llmsvc[bench]'\n"
    )
    assert not (tmp_path / "p").exists()


def _with_terminal_stderr(*args: str) -> tuple[int, str, bytes]:
    """Run with stderr on a pseudo-terminal: (status, stdout, what the terminal got)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        llmsvc_args("simulate", *args), stdout=subprocess.PIPE, stderr=slave, text=True
    )
    os.close(slave)
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child's end is closed
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    return proc.returncode, out, seen


def test_a_progress_bar_on_a_terminal_only_and_never_in_the_report() -> None:
    args = (*SMALL, "--policy", "fixed,standby", "--json")
    status, out, terminal = _with_terminal_stderr(*args)
    assert status == 0
    assert b"fixed" in terminal and b"standby" in terminal and b"%" in terminal
    quiet_status, quiet_out, quiet_terminal = _with_terminal_stderr(*args, "--no-progress")
    assert quiet_status == 0 and quiet_terminal == b""
    assert out == quiet_out == simulate(*args).stdout


def test_the_speed_benchmark_writes_its_table(tmp_path: Path) -> None:
    out = tmp_path / "speed.md"
    done = subprocess.run(
        [sys.executable, "-m", "llmsvc.simulate.speed", "--duration", "120", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert text == done.stdout
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert [row.split(" | ")[0] for row in rows[1:]] == [
        "| (trace generation)", "| fixed", "| autoscale", "| autoscale-zero", "| standby",
    ]  # fmt: skip
    assert "Machine: " in text and "llmsvc commit " in text
