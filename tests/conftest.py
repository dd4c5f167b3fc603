"""Fixtures every test module can use: ``spawn``, ``module_spawn``, ``kubeapi``, and the real
engine's ``llama_server_bin``, ``smollm2_gguf`` and ``real_engine_slot`` (``realengine.py``)."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pluggy
import pytest

from kubeapi import KubeAPI, start_kubeapi
from procs import ProcGroup, Spawn
from realengine import (  # noqa: F401 - fixtures for every module
    llama_server_bin,
    real_engine_slot,
    smollm2_gguf,
)


@pytest.fixture
def spawn(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ProcGroup]:
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
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pluggy.Result[pytest.TestReport], None]:
    """Keep each phase's report on the item (``rep_call``), for the fixtures' teardown."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture
def kubeapi(spawn: Spawn, tmp_path: Path) -> Iterator[KubeAPI]:
    """A Kubernetes API emulator process (``tests/kubeapi.py``), stopped at teardown."""
    api = start_kubeapi(spawn, tmp_path)
    yield api
    api.close()
