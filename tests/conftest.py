from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from procs import Proc, llmsvc_args


class Spawn(Protocol):
    def __call__(
        self, name: str, *args: str, env: dict[str, str] | None = None, raw: bool = False
    ) -> Proc: ...


@pytest.fixture
def spawn(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Spawn]:
    """Start real processes (``llmsvc`` subcommands unless ``raw``); all stopped at teardown."""
    procs: list[Proc] = []

    def _spawn(name: str, *args: str, env: dict[str, str] | None = None, raw: bool = False) -> Proc:
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        argv = list(args) if raw else llmsvc_args(*args)
        proc = Proc(name, argv, tmp_path / f"{name}.log", full_env)
        procs.append(proc)
        return proc

    yield _spawn
    for proc in reversed(procs):
        proc.stop()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for proc in procs:
            print(f"\n----- log of {proc.name} -----\n{proc.log()[-4000:]}")


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
