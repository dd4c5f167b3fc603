"""Secrets are never logged: router API keys and the registry token.

A registry with a token, a babysitter registering with it, and a router with
API keys (reading the registry with the token) run at debug log level, text and
JSON. Good and bad requests go through: the right key, a wrong key, no key, a
write with the right token, with a wrong token, without one. Then every process
is stopped and every file under the test's directory (each process's
stdout/stderr and the babysitter's engine logs) is searched for the secrets and
for the wrong ones clients sent.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx

from llmsvc.core.registry_client import LEASE_HEADER
from procs import Spawn, start_babysitter, start_registry, start_router, wait_until

CHAT = "/v1/chat/completions"


def _body(model: str = "sim-model") -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def test_no_secret_reaches_any_log(spawn: Spawn, tmp_path: Path) -> None:
    token = f"REGTOKEN{secrets.token_hex(12)}"
    key = f"APIKEY{secrets.token_hex(12)}"
    other_key = f"APIKEYTWO{secrets.token_hex(12)}"
    wrong_key = f"WRONGKEY{secrets.token_hex(12)}"
    wrong_token = f"WRONGTOKEN{secrets.token_hex(12)}"
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"# the second key\n{other_key}\n")
    debug = ("--log-level", "debug")

    registry_proc, registry = start_registry(spawn, "--token", token, *debug)
    sitter_proc, _, _ = start_babysitter(
        spawn,
        registry,
        "secret-engine",
        "--registry-token",
        token,
        "--log-dir",
        str(tmp_path / "engine-logs"),
        "--log-format",
        "json",
        *debug,
    )
    router_proc, router = start_router(
        spawn,
        registry,
        "--api-keys",
        key,
        "--api-keys-file",
        str(keys_file),
        "--registry-token",
        token,
        *debug,
    )
    good = {"Authorization": f"Bearer {key}"}

    def routed() -> bool:
        resp = httpx.get(router + "/v1/models", headers=good, timeout=5)
        return resp.status_code == 200 and bool(resp.json()["data"])

    wait_until(routed, timeout=30, what="the router to see the engine")

    # Good and bad requests to the router.
    assert httpx.post(router + CHAT, json=_body(), headers=good, timeout=30).status_code == 200
    second = {"Authorization": f"Bearer {other_key}"}
    assert httpx.post(router + CHAT, json=_body(), headers=second, timeout=30).status_code == 200
    bad = {"Authorization": f"Bearer {wrong_key}"}
    assert httpx.post(router + CHAT, json=_body(), headers=bad, timeout=30).status_code == 401
    assert httpx.get(router + "/v1/models", headers=bad, timeout=30).status_code == 401
    assert httpx.post(router + CHAT, json=_body(), timeout=30).status_code == 401
    bad_body = httpx.post(router + CHAT, content=b"{oops", headers=good, timeout=30)
    assert bad_body.status_code == 400
    nothing = httpx.post(router + CHAT, json=_body("no-such-model"), headers=good, timeout=30)
    assert nothing.status_code == 503
    for resp in (bad_body, nothing):
        assert key not in resp.text

    # Good and bad writes to the registry.
    record = {"name": "extra", "host": "127.0.0.1", "port": 9, "type": "other"}
    auth = {"Authorization": f"Bearer {token}"}
    created = httpx.post(registry + "/services", json=record, headers=auth)
    assert created.status_code == 201
    wrong = {"Authorization": f"Bearer {wrong_token}"}
    assert httpx.post(registry + "/services", json=record, headers=wrong).status_code == 401
    assert httpx.delete(registry + "/services/extra", headers=wrong).status_code == 401
    assert httpx.post(registry + "/services", json=record).status_code == 401
    basic = {"Authorization": f"Basic {token}"}
    assert httpx.post(registry + "/services", json=record, headers=basic).status_code == 401
    lease = created.json()["lease"]  # deleting the name needs its lease
    owned = {**auth, LEASE_HEADER: lease}
    assert httpx.delete(registry + "/services/extra", headers=owned).status_code == 200
    # The babysitter heartbeats with the token meanwhile; a restart makes it register again.
    sitter_api = sitter_proc.args[sitter_proc.args.index("--port") + 1]
    restart = httpx.post(
        f"http://127.0.0.1:{int(sitter_api) + 1}/restart", headers=auth, timeout=30
    )
    assert restart.status_code == 202
    wait_until(routed, timeout=30, what="the engine back after its restart")

    for proc in (router_proc, sitter_proc, registry_proc):
        proc.stop()

    files = [p for p in tmp_path.rglob("*") if p.is_file() and p != keys_file]
    logs = {p: p.read_text(errors="replace") for p in files}
    # The logs were written (and are what was searched): each process's, and the engine's.
    assert "registered secret-engine" in registry_proc.log()
    assert "listening" in router_proc.log()
    assert list((tmp_path / "engine-logs").rglob("*.log")), files
    for secret in (token, key, other_key, wrong_key, wrong_token, lease):
        leaks = [str(p) for p, text in logs.items() if secret in text]
        assert not leaks, f"{secret[:8]}… found in {leaks}"
