"""A babysitter of the sim engine with a real registry: register, heartbeat, re-register."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx

from llmsvc.babysitter.output import safe_name
from llmsvc.core.registry_client import LEASE_HEADER
from procs import (
    Spawn,
    free_port,
    pid_alive,
    records,
    spawn_babysitter,
    start_registry,
    status,
    wait_until,
)


def test_registers_engine_and_itself_then_deregisters_on_sigterm(spawn: Spawn) -> None:
    _, registry = start_registry(spawn)
    proc, port, api = spawn_babysitter(
        spawn, "--engine", "sim", "--model", "/models/tiny-llm", "--registry", registry,
        "--router", "http://127.0.0.1:9", "--weight", "3",
    )  # fmt: skip
    proc.wait_http(api + "/health")
    name = f"tiny-llm@127.0.0.1:{port}"
    found = wait_until(lambda: name in (r := records(registry)) and r, what="engine record")
    engine, sitter = found[name], found[f"{name}-babysitter"]
    assert (engine["type"], engine["port"], engine["weight"]) == ("openai-api", port, 3)
    assert engine["metadata"]["models"] == ["tiny-llm"]
    assert engine["metadata"]["engine"] == "sim"
    assert engine["metadata"]["babysitter_url"] == api
    assert (sitter["type"], sitter["port"]) == ("babysitter", port + 1)
    assert sitter["metadata"]["engine_service"] == name
    assert sitter["metadata"]["health_path"] == "/status"

    st = status(api)
    assert st["registered"] == {"engine": True, "babysitter": True}
    assert (st["router"], st["registry"], st["name"]) == ("http://127.0.0.1:9", registry, name)
    engine_pid = st["pid"]

    proc.signal(signal.SIGTERM)
    assert proc.popen.wait(15) == 0
    assert records(registry) == {}
    wait_until(lambda: not pid_alive(engine_pid), timeout=5, what="engine gone")


def test_heartbeat_404_registers_again(spawn: Spawn, tmp_path: Path) -> None:
    _, registry = start_registry(spawn)
    proc, port, api = spawn_babysitter(
        spawn, "--engine", "sim", "--model", "m", "--registry", registry,
        "--log-dir", str(tmp_path),
    )  # fmt: skip
    proc.wait_http(api + "/health")
    name = f"m@127.0.0.1:{port}"
    before = wait_until(lambda: records(registry).get(name), what="engine record")
    wait_until(lambda: status(api)["registered"]["babysitter"], what="both registered")
    leases = json.loads((tmp_path / f"{safe_name(name)}.leases.json").read_text())
    for each in (name, f"{name}-babysitter"):  # deleted by someone holding the leases
        held = {LEASE_HEADER: leases[each]}
        assert httpx.delete(f"{registry}/services/{each}", headers=held).status_code == 200

    def registered_again() -> bool:
        now = records(registry)
        return (
            f"{name}-babysitter" in now
            and name in now
            and now[name]["registered_at"] > before["registered_at"]
        )

    wait_until(registered_again, timeout=5, what="both records back")
    assert "registering it again" in proc.log()


def test_registry_down_at_start_then_up(spawn: Spawn) -> None:
    reg_port = free_port()
    registry = f"http://127.0.0.1:{reg_port}"
    proc, _, api = spawn_babysitter(
        spawn, "--engine", "sim", "--model", "m", "--registry", registry
    )
    proc.wait_http(api + "/health")  # serves although the registry is down
    assert status(api)["registered"] == {"engine": False, "babysitter": False}
    assert status(api)["registration"]["babysitter"] == "unreachable"
    start_registry(spawn, port=reg_port)
    wait_until(lambda: len(records(registry)) == 2, timeout=5, what="registered after outage")
    assert proc.log().count("registry unreachable") == 1


def test_registry_token_is_sent(spawn: Spawn) -> None:
    _, registry = start_registry(spawn, "--token", "s3cret")
    proc, _, api = spawn_babysitter(
        spawn, "--engine", "sim", "--model", "m", "--registry", registry,
        env={"LLMSVC_REGISTRY_TOKEN": "s3cret"},
    )  # fmt: skip
    proc.wait_http(api + "/health")

    def listed() -> int:  # the registry's reads need the token too
        auth = {"Authorization": "Bearer s3cret"}
        return len(httpx.get(registry + "/services", headers=auth, timeout=5).json()["services"])

    wait_until(lambda: listed() == 2, timeout=5, what="both registered")
    assert "s3cret" not in proc.log()
