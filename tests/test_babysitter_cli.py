"""``llmsvc babysitter`` on the command line: bad input is one line and exit status 2."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from procs import HOST, free_port, llmsvc_args, standin_env


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        llmsvc_args("babysitter", *args), capture_output=True, text=True, timeout=30, check=False
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--engine", "tgi", "--model", "m"], "--engine"),
        (["--model", "m"], "--engine is required"),
        (["--engine", "vllm"], "--model is required"),
        (["--engine", "command"], "after '--'"),
        (["--engine", "sim", "--model", "m", "--port", "abc"], "--port"),
        (["--engine", "sim", "--model", "m", "--port", "65535"], "--port"),
        (["--engine", "sim", "--model", "m", "--gpus", "0", "--weight", "0"], "--weight"),
        (["--engine", "sim", "--model", "m", "--name", "bad name"], "--name"),
        (["--engine", "sim", "--model", "m", "--visible-devices-env", "A-B"], "--visible-devices"),
        (["--engine", "sim", "--model", "m", "--no-such-flag"], "unrecognized"),
        (["--engine", "sim", "--model", "m", "--health-timeout", "0"], "--health-timeout"),
        (
            ["--engine", "sim", "--model", "m", "--registry-token-file", "/nonexistent/t"],
            "--registry-token-file /nonexistent/t",
        ),
        (
            [
                "--engine",
                "sim",
                "--model",
                "m",
                "--registry-token",
                "t",
                "--registry-token-file",
                "/etc/hostname",
            ],
            "not both",
        ),
    ],
)
def test_bad_flags_one_line_exit_2(args: list[str], says: str) -> None:
    result = run(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert says in lines[-1]
    assert lines[-1].startswith("llmsvc babysitter: error:")


def test_help_lists_the_flags() -> None:
    result = run("--help")
    assert result.returncode == 0
    for flag in ("--engine", "--model-name", "--restart-backoff", "--drain-timeout", "--gpus"):
        assert flag in result.stdout


def test_api_port_taken_exits_1_before_launching_the_engine(tmp_path: Path) -> None:
    record = tmp_path / "record"
    with socket.socket() as taken:
        port = free_port(pair=True)
        taken.bind((HOST, port + 1))  # the babysitter's own API port
        taken.listen()
        result = subprocess.run(
            llmsvc_args("babysitter", "--engine", "vllm", "--model", "m", "--port", str(port)),
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, **standin_env(record)},
        )
    assert result.returncode == 1
    assert f"cannot listen on {HOST}:{port + 1}" in result.stderr
    assert "Traceback" not in result.stderr
    assert "supervisor" not in result.stderr, "the supervisor started although it cannot serve"
    assert not record.exists(), "the engine was launched although the babysitter could not serve"
