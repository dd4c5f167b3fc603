"""The state file: atomic writes, restarts of the real process, refusal of a corrupt file."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

import metrics
from llmsvc.core.records import ServiceRecord
from llmsvc.registry.app import create_app
from llmsvc.registry.persistence import SavedState, StateFileError, load_state, save_state
from llmsvc.registry.settings import RegistrySettings
from procs import HOST, Proc, Spawn, free_port, llmsvc_args, wait_until

LEASE = "X-Llmsvc-Lease"


def start(spawn: Spawn, state: Path, *extra: str, name: str = "registry") -> tuple[Proc, str]:
    port = free_port()
    proc = spawn(
        name,
        "registry",
        "--port",
        str(port),
        "--state-file",
        str(state),
        "--health-interval",
        "60",
        "--allow-anonymous-writes",
        *extra,
    )
    url = f"http://{HOST}:{port}"
    proc.wait_http(f"{url}/health")
    return proc, url


def saved_names(path: Path) -> list[str]:
    try:
        return sorted(s["name"] for s in json.loads(path.read_text())["services"])
    except (OSError, ValueError):
        return []


def run_registry(*args: str) -> subprocess.CompletedProcess[str]:
    port = str(free_port())
    return subprocess.run(
        llmsvc_args("registry", "--port", port, "--allow-anonymous-writes", *args),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_save_is_atomic_and_loads_back(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.json"
    record = ServiceRecord.model_validate(
        {"name": "a", "host": "h", "port": 1, "metadata": {"models": ["m"]}, "registered_at": 7.0}
    )
    save_state(path, SavedState(index=3, services=[record]))
    save_state(path, SavedState(index=4, services=[record]))
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json", "state.json.prev"]
    loaded = load_state(path)
    assert loaded is not None
    assert loaded.index == 4
    assert loaded.services == [record]
    previous = load_state(path.parent / "state.json.prev")  # the generation before
    assert previous is not None
    assert previous.index == 3
    assert load_state(tmp_path / "missing.json") is None


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "empty"),
        (b"{not json", "not valid JSON"),
        (b"[]", "Input should be"),
        (b'{"version": 2, "services": []}', "version"),
        (b'{"services": [{"name": "a", "host": "h", "port": "x"}]}', "services.0.port"),
    ],
)
def test_corrupt_file_is_refused(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with pytest.raises(StateFileError, match=problem) as info:
        load_state(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_unwritable_location(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StateFileError, match="cannot write"):
        save_state(tmp_path / "file" / "state.json", SavedState())
    with pytest.raises(StateFileError, match="cannot read"):
        load_state(tmp_path)  # a directory


def test_survives_sigterm_and_sigkill(spawn: Spawn, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    proc, url = start(spawn, state)
    svc = {"name": "engine-a", "host": "127.0.0.1", "port": 8000, "metadata": {"models": ["m"]}}
    first = httpx.post(f"{url}/services", json=svc).json()
    b = httpx.post(f"{url}/services", json={**svc, "name": "engine-b", "port": 8002}).json()
    assert httpx.delete(f"{url}/services/engine-b", headers={LEASE: b["lease"]}).status_code == 200
    httpx.post(f"{url}/services", json={**svc, "name": "sitter", "type": "babysitter"})
    index = int(httpx.get(f"{url}/services").headers["X-Llmsvc-Index"])
    stopped_at = time.time()
    assert proc.stop() == 0  # SIGTERM: the last changes are flushed before exit
    assert saved_names(state) == ["engine-a", "sitter"]

    proc2, url2 = start(spawn, state, name="registry-2")
    body = httpx.get(f"{url2}/services").json()
    assert [s["name"] for s in body["services"]] == ["engine-a", "sitter"]
    again = body["services"][0]
    assert again["registered_at"] == first["registered_at"]
    assert again["metadata"] == {"models": ["m"]}
    assert again["last_heartbeat"] >= stopped_at
    assert int(httpx.get(f"{url2}/services").headers["X-Llmsvc-Index"]) > index

    # A crash loses nothing that was written: changes are saved as they happen.
    httpx.post(f"{url2}/services", json={**svc, "name": "engine-c", "port": 8004})
    wait_until(lambda: "engine-c" in saved_names(state), timeout=5, what="engine-c saved")
    proc2.kill()
    _, url3 = start(spawn, state, name="registry-3")
    names = [s["name"] for s in httpx.get(f"{url3}/services").json()["services"]]
    assert names == ["engine-a", "engine-c", "sitter"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".tmp") == []


def test_corrupt_state_file_exits_1_with_one_line(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text('{"version": 1, "services": [{"name": "a"}]}')
    done = run_registry("--state-file", str(state))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(state) in lines[0]
    assert "services.0.host" in lines[0]
    assert state.read_text().startswith('{"version": 1')  # left alone for a person to fix


def test_unusable_state_file_location_exits_1(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    done = run_registry("--state-file", str(tmp_path / "file" / "state.json"))
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1
    assert "cannot read it: Not a directory" in done.stderr
    # Readable (absent) but not writable, even for root: refused at start, not at a change.
    done = run_registry("--state-file", "/proc/llmsvc-registry-state.json")
    assert done.returncode == 1
    assert "cannot write it" in done.stderr


def test_bad_flag_value_exits_2() -> None:
    done = run_registry("--heartbeat-ttl", "-1")
    assert done.returncode == 2
    assert "--heartbeat-ttl" in done.stderr
    assert "Traceback" not in done.stderr


async def test_shutdown_flushes_pending_changes(aiohttp_client: Any, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    settings = RegistrySettings(
        state_file=state, health_interval=60, cleanup_interval=60, allow_anonymous_writes=True
    )
    client = await aiohttp_client(create_app(settings, registry=CollectorRegistry()))
    assert saved_names(state) == []  # written at start: the location is known to work
    resp = await client.post("/services", json={"name": "a", "host": "h", "port": 1})
    assert resp.status == 201
    await client.close()  # well within the writer's coalescing delay
    assert saved_names(state) == ["a"]


def test_sigterm_answers_open_watchers_and_exits(spawn: Spawn, tmp_path: Path) -> None:
    proc, url = start(spawn, tmp_path / "state.json")
    index = httpx.get(f"{url}/services").headers["X-Llmsvc-Index"]
    answers: list[httpx.Response] = []
    watcher = threading.Thread(
        target=lambda: answers.append(
            httpx.get(f"{url}/services", params={"index": index, "wait": "60s"}, timeout=30)
        )
    )
    watcher.start()
    wait_until(
        lambda: metrics.value(metrics.scrape(url), "llmsvc_registry_blocking_queries") == 1,
        what="the blocking query waiting",
    )
    started = time.monotonic()
    assert proc.stop() == 0
    watcher.join(10)
    assert time.monotonic() - started < 3
    assert [r.status_code for r in answers] == [200]


def test_corrupt_state_file_recovers_the_previous_generation(spawn: Spawn, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    proc, url = start(spawn, state)
    svc = {"name": "engine-a", "host": "127.0.0.1", "port": 8000, "metadata": {"models": ["m"]}}
    httpx.post(f"{url}/services", json=svc)
    wait_until(lambda: saved_names(state) == ["engine-a"], timeout=5, what="engine-a saved")
    httpx.post(f"{url}/services", json={**svc, "name": "engine-b", "port": 8002})
    wait_until(lambda: "engine-b" in saved_names(state), timeout=5, what="engine-b saved")
    proc.kill()
    assert saved_names(tmp_path / "state.json.prev") == ["engine-a"]
    half = state.read_bytes()[:40]  # a write cut short
    state.write_bytes(half)

    proc2, url2 = start(spawn, state, name="registry-2")
    names = [s["name"] for s in httpx.get(f"{url2}/services").json()["services"]]
    assert names == ["engine-a"]
    warning = next(line for line in proc2.log().splitlines() if "corrupt state file" in line)
    assert "not valid JSON" in warning
    assert "state.json.prev" in warning
    assert "1 records" in warning
    assert "changes after it are lost" in warning
    (aside,) = tmp_path.glob("state.json.corrupt-*")
    assert aside.name in warning
    assert aside.read_bytes() == half  # kept for a person to look at
    wait_until(lambda: saved_names(state) == ["engine-a"], timeout=5, what="state rewritten")


def test_corrupt_state_file_and_previous_generation_exit_1(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text('{"version": 1, "services": [')
    (tmp_path / "state.json.prev").write_text("{not json")
    done = run_registry("--state-file", str(state))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(state) in lines[0]
    assert "state.json.prev" in lines[0]
    assert state.read_text() == '{"version": 1, "services": ['  # left alone for a person


def test_leases_survive_a_restart_as_digests_only(spawn: Spawn, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    proc, url = start(spawn, state)
    svc = {"name": "engine-a", "host": "127.0.0.1", "port": 8000}
    mine = httpx.post(f"{url}/services", json=svc).json()
    httpx.post(f"{url}/services", json={**svc, "name": "engine-b"})  # a .prev generation
    assert proc.stop() == 0
    digest = hashlib.sha256(mine["lease"].encode()).hexdigest()
    for path in (state, state.with_name("state.json.prev")):
        assert mine["lease"] not in path.read_text()  # never the lease itself
    assert json.loads(state.read_text())["leases"]["engine-a"] == digest

    _, url2 = start(spawn, state, name="registry-2")
    impostor = httpx.post(f"{url2}/services", json={**svc, "port": 6666})
    assert impostor.status_code == 409 and impostor.json()["error"]["code"] == "name_taken"
    beat = httpx.post(f"{url2}/services/engine-a/heartbeat")
    assert beat.status_code == 409 and beat.json()["error"]["code"] == "lease_mismatch"
    lease = {LEASE: mine["lease"]}
    assert httpx.post(f"{url2}/services/engine-a/heartbeat", headers=lease).status_code == 200
    again = httpx.post(f"{url2}/services", json=svc, headers=lease)
    assert again.status_code == 200 and again.json()["lease"] == mine["lease"]


async def test_a_state_file_from_before_leases_loads_and_its_names_can_be_claimed(
    aiohttp_client: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state.json"
    record = {"name": "old", "host": "127.0.0.1", "port": 8000, "registered_at": 1.0}
    state.write_text(json.dumps({"version": 1, "index": 7, "services": [record]}))
    settings = RegistrySettings(
        state_file=state, health_interval=60, cleanup_interval=60, allow_anonymous_writes=True
    )
    client = await aiohttp_client(create_app(settings, registry=CollectorRegistry()))
    assert (await client.get("/services/old")).status == 200
    # No lease: heartbeats are refused (the sender registers again), a registration takes it.
    assert (await client.post("/services/old/heartbeat")).status == 409
    with caplog.at_level(logging.INFO, logger="llmsvc.registry"):
        resp = await client.post("/services", json={"name": "old", "host": "h", "port": 1})
    assert resp.status == 201
    assert "old taken over: its record had no lease" in caplog.text
    lease = {LEASE: (await resp.json())["lease"]}
    assert (await client.post("/services/old/heartbeat", headers=lease)).status == 200


def test_a_state_file_with_a_lease_in_clear_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"version": 1, "leases": {"a": "not-a-digest"}}))
    with pytest.raises(StateFileError, match="leases"):
        load_state(state)
