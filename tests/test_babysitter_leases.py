"""A babysitter holds its names with leases: kept in a file, presented, never fought over.

Against a real registry started with a token: a babysitter restarted on the
same host and port with its ``--log-dir`` has its names back at once; a name a
live impostor holds is a conflict (409, logged once, retried) until the
impostor's heartbeat expires; a registry restarted without a state file gets
both records back with the same leases. The lease file itself: mode 0600,
written atomically, and a corrupt one is a warning, never a crash.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import time
from pathlib import Path

import httpx
import pytest

from llmsvc.babysitter.leases import LeaseFile
from llmsvc.core.registry_client import LEASE_HEADER
from procs import (
    Proc,
    Spawn,
    babysitter_flags,
    free_port,
    start_registry,
    status,
    wait_until,
)

TOKEN = "registry-write-token-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _sitter(
    spawn: Spawn,
    registry: str,
    name: str,
    port: int,
    log_dir: Path,
    *,
    proc_name: str,
    wait: bool = True,
) -> tuple[Proc, str]:
    """A babysitter of a sim engine named ``name`` on ``port`` (with ``wait``, ready):
    (process, API URL)."""
    proc = spawn(
        proc_name, "babysitter", "--port", str(port), *babysitter_flags(),
        "--engine", "sim", "--model", "sim-model", "--name", name,
        "--registry", registry, "--registry-token", TOKEN, "--log-dir", str(log_dir),
        "--", "--time-scale", "0",
    )  # fmt: skip
    api = f"http://127.0.0.1:{port + 1}"
    if wait:
        proc.wait_http(api + "/health", timeout=30)
    return proc, api


def _registered(api: str) -> bool:
    both: dict[str, str] = status(api)["registration"]
    return both == {"engine": "registered", "babysitter": "registered"}


def _lease_file(log_dir: Path, name: str) -> dict[str, str]:
    data: dict[str, str] = json.loads((log_dir / f"{name}.leases.json").read_text())
    return data


def _records(registry: str) -> dict[str, dict[str, object]]:
    resp = httpx.get(registry + "/services", headers=AUTH, timeout=5)
    resp.raise_for_status()
    return {r["name"]: r for r in resp.json()["services"]}


def test_restarted_babysitter_reclaims_its_names_at_once(spawn: Spawn, tmp_path: Path) -> None:
    _, registry = start_registry(spawn, "--token", TOKEN, "--heartbeat-ttl", "60")
    port, logs = free_port(pair=True), tmp_path / "logs"
    first, api = _sitter(spawn, registry, "reclaimed", port, logs, proc_name="first")
    wait_until(lambda: _registered(api), timeout=10, what="both records registered")
    leases = _lease_file(logs, "reclaimed")
    assert set(leases) == {"reclaimed", "reclaimed-babysitter"}
    assert stat.S_IMODE((logs / "reclaimed.leases.json").stat().st_mode) == 0o600
    os.kill(first.pid, signal.SIGKILL)  # no deregistration: the records stay, heartbeats stop
    first.popen.wait(10)
    wait_until(lambda: not _port_answers(api), timeout=10, what="the engine gone with it")

    started = time.monotonic()
    second, api = _sitter(spawn, registry, "reclaimed", port, logs, proc_name="second")
    wait_until(lambda: _registered(api), timeout=10, what="names reclaimed")
    assert time.monotonic() - started < 30  # far below the 60 s TTL: the leases did it
    assert _lease_file(logs, "reclaimed") == leases
    assert "cannot register" not in second.log()
    assert _records(registry)["reclaimed"]["port"] == port


def _port_answers(api: str) -> bool:
    try:
        httpx.get(api + "/status", timeout=1)
    except httpx.HTTPError:
        return False
    return True


def test_a_name_held_by_a_live_impostor_is_retried_until_it_expires(
    spawn: Spawn, tmp_path: Path
) -> None:
    _, registry = start_registry(spawn, "--token", TOKEN, "--heartbeat-ttl", "3")
    impostor = {"name": "contested", "host": "127.0.0.1", "port": 9, "type": "openai-api",
                "metadata": {"models": ["sim-model"]}}  # fmt: skip
    taken = httpx.post(registry + "/services", json=impostor, headers=AUTH, timeout=5)
    assert taken.status_code == 201
    lease = {LEASE_HEADER: taken.json()["lease"], **AUTH}

    def impostor_beats() -> None:
        beat = httpx.post(f"{registry}/services/contested/heartbeat", headers=lease, timeout=5)
        assert beat.status_code == 200, beat.text

    port = free_port(pair=True)
    sitter, api = _sitter(
        spawn, registry, "contested", port, tmp_path, proc_name="sitter", wait=False
    )

    # While the impostor heartbeats, the name stays its own: the babysitter's is a conflict.
    def in_conflict() -> bool:
        impostor_beats()
        return _engine_state(api) == "conflict"

    wait_until(in_conflict, timeout=30, what="the conflict")
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        impostor_beats()
        assert _engine_state(api) == "conflict"
        time.sleep(0.3)
    assert status(api)["registration"] == {"engine": "conflict", "babysitter": "registered"}
    assert _records(registry)["contested"]["port"] == 9
    assert sitter.log().count("cannot register contested:") == 1

    # The impostor stops heartbeating: past the TTL the name is free, and the babysitter's.
    wait_until(lambda: _registered(api), timeout=15, what="the name free again")
    assert _records(registry)["contested"]["port"] == port
    assert sitter.log().count("cannot register contested:") == 1
    assert "contested is ours again" in sitter.log()


def test_an_admin_override_is_not_fought_and_the_name_comes_back(
    spawn: Spawn, tmp_path: Path
) -> None:
    admin = "registry-admin-token-0123"
    _, registry = start_registry(
        spawn, "--token", TOKEN, "--admin-token", admin, "--heartbeat-ttl", "3"
    )
    port = free_port(pair=True)
    sitter, api = _sitter(spawn, registry, "overridden", port, tmp_path, proc_name="sitter")
    wait_until(lambda: _registered(api), timeout=10, what="both registered")
    ours = _lease_file(tmp_path, "overridden")["overridden"]
    record = {"name": "overridden", "host": "127.0.0.1", "port": 9, "type": "openai-api"}
    override = httpx.post(registry + "/services", json=record,
                          headers={"Authorization": f"Bearer {admin}"}, timeout=5)  # fmt: skip
    assert override.status_code == 200, override.text
    theirs = {LEASE_HEADER: override.json()["lease"], **AUTH}
    assert theirs[LEASE_HEADER] != ours

    def override_holds() -> bool:
        beat = httpx.post(f"{registry}/services/overridden/heartbeat", headers=theirs, timeout=5)
        assert beat.status_code == 200, beat.text
        return _engine_state(api) == "conflict"

    wait_until(override_holds, timeout=10, what="the babysitter to see the override")
    assert "another registration took over overridden" in sitter.log()
    assert "overridden" not in _lease_file(tmp_path, "overridden")  # forgotten
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:  # the babysitter never takes it back from a live holder
        assert override_holds()
        assert _records(registry)["overridden"]["port"] == 9
        time.sleep(0.3)
    wait_until(lambda: _registered(api), timeout=15, what="the name back after the TTL")
    assert _records(registry)["overridden"]["port"] == port
    assert sitter.log().count("another registration took over overridden") == 1
    assert "cannot register overridden:" not in sitter.log()  # one ERROR per episode


def _engine_state(api: str) -> str | None:
    try:
        state: str = status(api)["registration"]["engine"]
    except httpx.HTTPError:
        return None
    return state


def test_registry_restarted_without_state_gets_both_records_with_the_same_leases(
    spawn: Spawn, tmp_path: Path
) -> None:
    reg_port = free_port()
    reg, registry = start_registry(spawn, "--token", TOKEN, port=reg_port)
    _, api = _sitter(spawn, registry, "kept", free_port(pair=True), tmp_path, proc_name="s")
    wait_until(lambda: _registered(api), timeout=10, what="both registered")
    leases = _lease_file(tmp_path, "kept")
    reg.stop()
    start_registry(spawn, "--token", TOKEN, port=reg_port, name="registry-again")
    wait_until(lambda: set(_records(registry)) == set(leases), timeout=15, what="both back")
    assert _lease_file(tmp_path, "kept") == leases
    for name, held in leases.items():
        ok = httpx.post(f"{registry}/services/{name}/heartbeat",
                        headers={LEASE_HEADER: held, **AUTH}, timeout=5)  # fmt: skip
        assert ok.status_code == 200, ok.text
        wrong = {LEASE_HEADER: "x" * 43, **AUTH}
        other = httpx.post(f"{registry}/services/{name}/heartbeat", headers=wrong, timeout=5)
        assert other.status_code == 409
        assert other.json()["error"]["code"] == "lease_mismatch"


# ---- the lease file ------------------------------------------------------------------


def test_lease_file_round_trip_is_private_and_atomic(tmp_path: Path) -> None:
    path = tmp_path / "dir" / "e.leases.json"
    file = LeaseFile(path)
    assert file.load() == {}
    file.save({"e": "lease-one", "e-babysitter": "lease-two"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert LeaseFile(path).load() == {"e": "lease-one", "e-babysitter": "lease-two"}
    file.save({"e": "lease-three"})
    assert LeaseFile(path).load() == {"e": "lease-three"}
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left


@pytest.mark.parametrize(
    "content", [b"{half", b"[1, 2]", b"\xff\xfe", b'"text"', b"x" * (70 * 1024)]
)
def test_a_corrupt_lease_file_is_a_warning_and_ignored(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "e.leases.json"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING):
        assert LeaseFile(path).load() == {}
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "ignoring the lease file" in caplog.records[0].getMessage()


def test_only_string_leases_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "e.leases.json"
    path.write_text(json.dumps({"e": "good", "f": 3, "g": "", "h": None}))
    assert LeaseFile(path).load() == {"e": "good"}


def test_an_unwritable_lease_file_is_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING):
        LeaseFile(blocker / "e.leases.json").save({"e": "lease"})
    assert "cannot write the lease file" in caplog.text
