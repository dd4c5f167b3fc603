"""Real processes on 127.0.0.1 for tests: start ``llmsvc`` subcommands, wait, stop.

The one set of process helpers of the tests:

- :class:`Proc` is a started process with its log; :class:`ProcGroup` starts and
  stops several; the ``spawn`` fixture (``conftest.py``) is a ``ProcGroup`` stopped when
  the test ends, and prints the logs of a failed test's processes. Type it :class:`Spawn`.
- :func:`wait_until` polls a condition; :func:`pid_alive`, :func:`port_busy` probe.
- :func:`start_registry`, :func:`start_router`, :func:`start_babysitter` start a stack
  one component at a time, with fast timing, each waited for until it answers
  ``/health``; :func:`spawn_babysitter` starts a babysitter with any flags and does not
  wait; :func:`records`, :func:`registry_record`, :func:`status`, :func:`wait_state`
  read the registry and a babysitter's API.
- :func:`standin_env` puts the stand-in engines of ``tests/standins/`` on ``PATH``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import httpx

# Ports for test processes: a slice per pytest-xdist worker below the ephemeral range,
# the same helper the benchmarks use.
from benchmarks.common.ports import free_port as free_port

HOST = "127.0.0.1"
STANDINS = Path(__file__).resolve().parent / "standins"


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: SIGTERM when the test process dies, even by SIGKILL or a timeout that
    skipped the fixtures' teardown, so that no service outlives the test run."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Proc:
    """A started ``llmsvc`` (or other) process with its log file."""

    def __init__(self, name: str, args: Sequence[str], log_path: Path, env: dict[str, str]):
        self.name = name
        self.args = list(args)
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            self.args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.popen.pid, sig)

    def kill(self) -> None:
        """SIGKILL the process alone (children stay, as after a real crash)."""
        self.signal(signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL of the whole process group after ``timeout``."""
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)  # stragglers of the group
        self._log.close()
        return self.popen.returncode

    def wait_http(self, url: str, *, timeout: float = 20.0, status: int = 200) -> httpx.Response:
        """Poll ``url`` until it answers ``status``; fail with the log tail otherwise."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(
                    f"{self.name} exited with {self.popen.returncode}:\n{self.log()[-3000:]}"
                )
            try:
                resp = httpx.get(url, timeout=2.0)
                if resp.status_code == status:
                    return resp
                last = resp.status_code
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.05)
        raise AssertionError(
            f"{self.name}: {url} not {status} after {timeout}s (last: {last!r}):\n"
            f"{self.log()[-3000:]}"
        )


def llmsvc_args(*args: str) -> list[str]:
    return [sys.executable, "-m", "llmsvc", *args]


class Spawn(Protocol):
    """Starts a process (an ``llmsvc`` subcommand unless ``raw``), stopped at teardown."""

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


T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T | Literal[False] | None],
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "",
) -> T:
    """Poll ``predicate`` until it returns a truthy value, which is returned."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def port_busy(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((HOST, port)) == 0


# --- a whole stack, one component at a time -------------------------------------------------
# Fast timing for tests: health checks and heartbeats every fraction of a second.


def start_registry(
    spawn: Spawn,
    *extra: str,
    name: str = "registry",
    port: int | None = None,
    token: str | None = None,
) -> tuple[Proc, str]:
    """A registry on ``port`` (else a free one), answering ``/health``: (process, URL).

    With ``token`` as its write token; without one (and no ``--token*`` in ``extra``)
    it runs with ``--allow-anonymous-writes``.
    """
    port = port or free_port()
    if token is not None:
        extra = ("--token", token, *extra)
    elif not any(a.startswith("--token") for a in extra):
        extra = ("--allow-anonymous-writes", *extra)
    proc = spawn(
        name,
        "registry",
        "--port",
        str(port),
        "--health-interval",
        "0.5",
        "--health-timeout",
        "1",
        "--cleanup-interval",
        "0.5",
        *extra,
    )
    url = f"http://{HOST}:{port}"
    proc.wait_http(f"{url}/health")
    return proc, url


def start_router(
    spawn: Spawn, registry_url: str | None, *extra: str, name: str = "router"
) -> tuple[Proc, str]:
    """A router following ``registry_url`` (if any), answering ``/health``: (process, URL)."""
    port = free_port()
    args = [
        "router",
        "--port",
        str(port),
        "--health-interval",
        "0.5",
        "--health-timeout",
        "1",
        "--registry-sync-interval",
        "0.5",
    ]
    if registry_url:
        args += ["--registry-url", registry_url]
    proc = spawn(name, *args, *extra)
    url = f"http://{HOST}:{port}"
    proc.wait_http(f"{url}/health")
    return proc, url


def spawn_sim_engine(spawn: Spawn, name: str, port: int, *extra: str) -> Proc:
    """A simulated engine serving model ``m`` at once (``--time-scale 0``), named ``name``
    in its answers (``--engine-id``); not yet waited for."""
    return spawn(
        name, "sim-engine", "--port", str(port), "--model-name", "m", "--engine-id", name,
        "--time-scale", "0", *extra,
    )  # fmt: skip


def start_sim_engine(spawn: Spawn, name: str, *extra: str) -> tuple[Proc, int]:
    """:func:`spawn_sim_engine` on a free port, once it answers ``/health``: (process, port)."""
    port = free_port()
    proc = spawn_sim_engine(spawn, name, port, *extra)
    proc.wait_http(f"http://{HOST}:{port}/health")
    return proc, port


def babysitter_flags(*, stop_timeout: float = 2) -> list[str]:
    """Short intervals, so that every transition of a babysitter takes a fraction of a second."""
    return [
        "--health-interval", "0.2",
        "--heartbeat-interval", "0.3",
        "--restart-backoff", "0.1",
        "--stop-timeout", str(stop_timeout),
    ]  # fmt: skip


def spawn_babysitter(
    spawn: Spawn,
    *args: str,
    env: dict[str, str] | None = None,
    name: str = "babysitter",
    stop_timeout: float = 2,
) -> tuple[Proc, int, str]:
    """A babysitter on a free port pair, not waited for: (process, engine port, API URL).

    ``args`` are its flags (after :func:`babysitter_flags`), then ``--`` and the engine's.
    """
    port = free_port(pair=True)
    ours, sep, engine = _split(args)
    flags = babysitter_flags(stop_timeout=stop_timeout)
    proc = spawn(name, "babysitter", "--port", str(port), *flags, *ours, *sep, *engine, env=env)
    return proc, port, f"http://{HOST}:{port + 1}"


def _split(args: tuple[str, ...]) -> tuple[list[str], list[str], list[str]]:
    if "--" in args:
        i = args.index("--")
        return list(args[:i]), ["--"], list(args[i + 1 :])
    return list(args), [], []


def start_babysitter(
    spawn: Spawn,
    registry_url: str | None,
    name: str,
    *extra: str,
    model: str = "sim-model",
    engine_args: tuple[str, ...] = ("--time-scale", "0"),
    wait: bool = True,
    env: dict[str, str] | None = None,
) -> tuple[Proc, str, str]:
    """A babysitter of a sim engine named ``name``: (process, engine URL, API URL).

    It registers with ``registry_url`` (if any); with ``wait`` its API answers ``/health``.
    """
    ours = ["--engine", "sim", "--model", model, "--name", name, *extra]
    if registry_url:
        ours += ["--registry", registry_url]
    engine = ["--engine-id", name, *engine_args]
    proc, port, api_url = spawn_babysitter(
        spawn, *ours, "--", *engine, name=name, stop_timeout=5, env=env
    )
    if wait:
        proc.wait_http(f"{api_url}/health", timeout=30)
    return proc, f"http://{HOST}:{port}", api_url


def registry_record(registry_url: str, name: str) -> dict[str, Any] | None:
    """The registry's record ``name``, or None when it has none."""
    resp = httpx.get(f"{registry_url}/services/{name}", timeout=5)
    if resp.status_code != 200:
        return None
    record: dict[str, Any] = resp.json()
    return record


def records(registry_url: str) -> dict[str, dict[str, Any]]:
    """Every record of the registry, by name."""
    resp = httpx.get(registry_url + "/services", timeout=5)
    resp.raise_for_status()
    return {r["name"]: r for r in resp.json()["services"]}


def status(api: str) -> dict[str, Any]:
    """A babysitter's ``GET /status``."""
    resp = httpx.get(api + "/status", timeout=5)
    resp.raise_for_status()
    data: dict[str, Any] = resp.json()
    return data


def wait_state(api: str, state: str, *, timeout: float = 20.0) -> dict[str, Any]:
    """Wait until the babysitter at ``api`` reports ``state``; its status then."""

    def check() -> dict[str, Any] | None:
        try:
            data = status(api)
        except httpx.HTTPError:
            return None
        return data if data["state"] == state else None

    return wait_until(check, timeout=timeout, what=f"state {state}")


def standin_env(record: Path) -> dict[str, str]:
    """PATH and PYTHONPATH that put the stand-in engines first; argv recorded to ``record``."""
    venv_bin = str(Path(sys.executable).parent)
    return {
        "PATH": os.pathsep.join([str(STANDINS), venv_bin, os.environ.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join([str(STANDINS / "pylib"), str(STANDINS)]),
        "LLMSVC_STANDIN_RECORD": str(record),
    }
