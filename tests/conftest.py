from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from kubeapi import KubeAPI, start_kubeapi
from procs import Proc, llmsvc_args


class Spawn(Protocol):
    def __call__(
        self, name: str, *args: str, env: dict[str, str] | None = None, raw: bool = False
    ) -> Proc: ...


class ProcGroup:
    """Processes started by one fixture; all stopped (SIGTERM, then SIGKILL) at teardown."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[Proc] = []

    def __call__(
        self, name: str, *args: str, env: dict[str, str] | None = None, raw: bool = False
    ) -> Proc:
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        argv = list(args) if raw else llmsvc_args(*args)
        proc = Proc(name, argv, self.log_dir / f"{name}.log", full_env)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def dump_logs(self) -> None:
        for proc in self.procs:
            print(f"\n----- log of {proc.name} -----\n{proc.log()[-4000:]}")


@pytest.fixture
def spawn(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Spawn]:
    """Start real processes (``llmsvc`` subcommands unless ``raw``); all stopped at teardown."""
    group = ProcGroup(tmp_path)
    yield group
    group.stop_all()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        group.dump_logs()


@pytest.fixture(scope="module")
def module_spawn(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[ProcGroup]:
    """Like ``spawn``, shared by every test of a module (a stack started once)."""
    group = ProcGroup(tmp_path_factory.mktemp("procs"))
    yield group
    group.stop_all()
    if request.session.testsfailed:
        group.dump_logs()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture
def kubeapi(spawn: Spawn, tmp_path: Path) -> Iterator[KubeAPI]:
    """A Kubernetes API emulator process (``tests/kubeapi.py``), stopped at teardown."""
    api = start_kubeapi(spawn, tmp_path)
    yield api
    api.close()
