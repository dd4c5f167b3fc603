"""The real llama-server and model of ``make real-engine``, for tests marked ``real_engine``.

:func:`llama_server` and :func:`smollm2_model` are the cached paths
(``scripts/real_engine.py`` decides them: ``$LLMSVC_CACHE_DIR``, default
``~/.cache/llmsvc``), or None when not built. The fixtures ``llama_server_bin`` and
``smollm2_gguf`` (made available to every test by ``conftest.py``) skip a test
without them, with the command that builds them; with
``LLMSVC_REQUIRE_REAL_ENGINE=1`` (set by ``.ci/run``) they fail it instead, so
that CI never silently stops running them. :func:`engine_env` puts the binary
first on ``PATH``, for a babysitter's ``--engine llama.cpp``.

Run real servers small (``SERVER_ARGS``: ``-c 2048 -np 2 --metrics``) and few: the test
machines have 2 cores. A test that starts real servers asks for ``real_engine_slot``
(before ``spawn``): one such test runs at a time across xdist workers.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from scripts.real_engine import llama_server_path, model_path

from procs import Proc, Spawn, spawn_babysitter

HOW = "run `make real-engine` (builds llama-server and fetches SmolLM2 into the cache, ~7 min)"
REQUIRE_ENV = "LLMSVC_REQUIRE_REAL_ENGINE"
SERVER_ARGS = ("-c", "2048", "-np", "2", "--metrics")
"""llama-server flags for tests: a small context, two slots, Prometheus metrics."""
MARKS = (pytest.mark.real_engine, pytest.mark.timeout(300))
"""Every real-engine module's ``pytestmark``: the marker, and room to wait for the lock of
``real_engine_slot`` behind other workers' real-engine tests."""
MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1"
"""The model's name as the babysitter derives it (the GGUF file's stem)."""


def llama_server() -> Path | None:
    """The cached ``llama-server`` of the pinned version, or None when not built."""
    path = llama_server_path()
    return path if path.is_file() and os.access(path, os.X_OK) else None


def smollm2_model() -> Path | None:
    """The cached SmolLM2-135M GGUF, or None when not fetched."""
    path = model_path()
    return path if path.is_file() else None


def _require(path: Path | None, what: str, expected: Path) -> Path:
    if path is not None:
        return path
    reason = f"no {what} at {expected}: {HOW}"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1: CI must have it)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def llama_server_bin() -> Path:
    """The real ``llama-server``; skips (fails in CI) when it is not built."""
    return _require(llama_server(), "llama-server", llama_server_path())


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M GGUF; skips (fails in CI) when it is not fetched."""
    return _require(smollm2_model(), "SmolLM2 model", model_path())


@pytest.fixture
def real_engine_slot(llama_server_bin: Path) -> Iterator[None]:
    """Held for one test: real-engine tests on other xdist workers wait (an exclusive lock
    on a file of the cache), so that one test's real servers run at a time. Ask for it
    before ``spawn``, so that it is released after the servers stopped. (``--dist
    loadgroup`` would do it without a lock, but cannot group on pytest 9.2:
    pytest-dev/pytest-xdist#1386.)"""
    with open(llama_server_bin.parent.parent / ".tests.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def engine_env(binary: Path) -> dict[str, str]:
    """``PATH`` with ``binary``'s directory first, so that ``llama-server`` is the real one."""
    return {"PATH": os.pathsep.join([str(binary.parent), os.environ.get("PATH", "")])}


def spawn_llama_babysitter(
    spawn: Spawn,
    binary: Path,
    gguf: Path,
    *flags: str,
    engine_args: tuple[str, ...] = SERVER_ARGS,
    env: dict[str, str] | None = None,
    name: str = "babysitter",
) -> tuple[Proc, int, str]:
    """A babysitter of the real llama-server (``--engine llama.cpp``), not waited for:
    (process, engine port, API URL). ``flags`` are the babysitter's, ``engine_args``
    the server's (after ``--``)."""
    return spawn_babysitter(
        spawn, "--engine", "llama.cpp", "--model", str(gguf), *flags, "--", *engine_args,
        env={**engine_env(binary), **(env or {})}, name=name, stop_timeout=5,
    )  # fmt: skip
