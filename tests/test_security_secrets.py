"""Secrets are never logged: router API keys and the registry token.

A registry with a token, a babysitter registering with it, and a router with
API keys (reading the registry with the token) run at debug log level, text and
JSON. Good and bad requests go through: the right key, a wrong key, no key, a
write with the right token, with a wrong token, without one. Then every process
is stopped and every file under the test's directory (each process's
stdout/stderr and the babysitter's engine logs) is searched for the secrets and
for the wrong ones clients sent.

The tokens of issue 11 the same way: the registry's admin token, the router's
admin token and the write token, all three from the files ``llmsvc tokens``
makes, and every lease (a registration's, one handed out by an admin override,
the babysitter's, kept in its lease file): in no log, no state file (which keeps
leases' digests) and no answer but the registration that hands a lease out.
"""

from __future__ import annotations

import hashlib
import secrets
import subprocess
from pathlib import Path

import httpx
import orjson

from llmsvc.core.registry_client import LEASE_HEADER
from procs import (
    Spawn,
    llmsvc_args,
    start_babysitter,
    start_registry,
    start_router,
    status,
    wait_until,
)

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
    assert nothing.status_code == 404  # model_not_found
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


# -- the tokens and leases of issue 11 -------------------------------------------------


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _make_tokens(directory: Path) -> dict[str, str]:
    """``llmsvc tokens --dir``: the token files' contents, by file name."""
    made = subprocess.run(
        llmsvc_args("tokens", "--dir", str(directory)),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    tokens = {p.name: p.read_text().strip() for p in directory.iterdir()}
    assert set(tokens) == {
        "registry-token",
        "registry-admin-token",
        "router-admin-token",
        "batch-token",
    }
    for token in tokens.values():
        assert token not in made.stdout and token not in made.stderr
    return tokens


def _lease_writes(registry: str, tokens: dict[str, str], wrong: dict[str, str]) -> list[str]:
    """Register, heartbeat, override, update and delete ``extra`` with leases right and
    wrong: the leases handed out (each only in its own registration's answer)."""
    write, admin = _bearer(tokens["registry-token"]), _bearer(tokens["registry-admin-token"])
    record = {"name": "extra", "host": "127.0.0.1", "port": 9, "type": "other"}
    first = httpx.post(registry + "/services", json=record, headers=write, timeout=10)
    assert first.status_code == 201
    lease = first.json()["lease"]
    own = {**write, LEASE_HEADER: lease}
    beat = registry + "/services/extra/heartbeat"
    assert httpx.post(beat, headers=own, timeout=10).status_code == 200
    refused = [
        httpx.post(beat, headers={**write, LEASE_HEADER: wrong["lease"]}, timeout=10),
        httpx.post(registry + "/services", json=record, headers=write, timeout=10),
        httpx.post(beat, headers={**_bearer(wrong["admin"]), LEASE_HEADER: lease}, timeout=10),
    ]
    assert [r.status_code for r in refused] == [409, 409, 401]
    override = httpx.post(registry + "/services", json=record, headers=admin, timeout=10)
    assert override.status_code == 200
    new_lease = override.json()["lease"]
    assert httpx.post(beat, headers=own, timeout=10).status_code == 409  # overridden
    own = {**write, LEASE_HEADER: new_lease}
    updated = httpx.put(registry + "/services/extra", json=record, headers=own, timeout=10)
    removed = httpx.delete(registry + "/services/extra", headers=own, timeout=10)
    assert (updated.status_code, removed.status_code) == (200, 200)
    for resp in (*refused, updated, removed):
        assert lease not in resp.text and new_lease not in resp.text
        assert wrong["lease"] not in resp.text and wrong["admin"] not in resp.text
    return [lease, new_lease]


def _answers(
    registry: str, router: str, api: str, tokens: dict[str, str], key: str
) -> dict[str, str]:
    """Every read of the three services, with the credentials each needs: url → text."""
    write, router_admin = _bearer(tokens["registry-token"]), _bearer(tokens["router-admin-token"])
    reads = [
        *((registry + p, write) for p in ("/services", "/services/secret-engine", "/stats")),
        (registry + "/services?index=0&wait=1s", write),
        *((registry + p, {}) for p in ("/health", "/metrics", "/openapi.json")),
        *((router + p, router_admin) for p in ("/stats", "/services", "/metrics")),
        *((router + p, {}) for p in ("/health", "/openapi.json")),
        (router + "/v1/models", _bearer(key)),
        *((api + p, {}) for p in ("/status", "/health", "/models", "/metrics", "/openapi.json")),
    ]
    texts: dict[str, str] = {}
    for url, headers in reads:
        resp = httpx.get(url, headers=headers, timeout=10)
        assert resp.status_code == 200, (url, resp.text[:200])
        texts[url] = resp.text
    return texts


def test_admin_tokens_token_files_and_leases_reach_no_log_and_no_answer(
    spawn: Spawn, tmp_path: Path
) -> None:
    """The registry's and the router's admin tokens, the token files' contents and every
    lease (the babysitter's, and those of a registration taken over with the admin token)
    appear in no log, no state file and no answer but the registration that hands out a
    lease; nor do a wrong admin token and a wrong lease that clients sent."""
    tokens_dir = tmp_path / "tokens"
    tokens = _make_tokens(tokens_dir)
    key = f"APIKEY{secrets.token_hex(12)}"
    wrong = {
        "admin": f"WRONGADMIN{secrets.token_hex(12)}",
        "lease": f"WRONGLEASE{secrets.token_hex(12)}",
    }
    debug = ("--log-level", "debug")
    files = {name: str(tokens_dir / name) for name in tokens}
    registry_proc, registry = start_registry(
        spawn,
        "--token-file",
        files["registry-token"],
        "--admin-token-file",
        files["registry-admin-token"],
        "--state-file",
        str(tmp_path / "state" / "registry.json"),
        *debug,
    )
    sitter_proc, _, api = start_babysitter(
        spawn,
        registry,
        "secret-engine",
        "--registry-token-file",
        files["registry-token"],
        "--log-dir",
        str(tmp_path / "engine-logs"),
        *debug,
    )
    router_proc, router = start_router(
        spawn,
        registry,
        "--api-keys",
        key,
        "--registry-token-file",
        files["registry-token"],
        "--admin-token-file",
        files["router-admin-token"],
        "--log-format",
        "json",
        *debug,
    )

    def routed() -> bool:
        resp = httpx.get(router + "/v1/models", headers=_bearer(key), timeout=5)
        return resp.status_code == 200 and bool(resp.json()["data"])

    wait_until(routed, timeout=30, what="the router to see the engine")
    leases = _lease_writes(registry, tokens, wrong)
    for credential in (wrong["admin"], tokens["registry-token"], key):  # not the router's admin
        assert httpx.get(router + "/stats", headers=_bearer(credential)).status_code == 401
    lease_files = list((tmp_path / "engine-logs").glob("*.leases.json"))
    assert [p.name for p in lease_files] == ["secret-engine.leases.json"]
    assert lease_files[0].stat().st_mode & 0o777 == 0o600
    sitter_leases = list(orjson.loads(lease_files[0].read_bytes()).values())
    assert len(sitter_leases) == 2  # the engine's record and the babysitter's own
    # A restart registers again, presenting the leases.
    engine_pid = status(api)["pid"]
    restart = httpx.post(api + "/restart", headers=_bearer(tokens["registry-token"]), timeout=30)
    assert restart.status_code == 202

    def restarted() -> bool:
        now = status(api)
        return now["state"] == "ready" and now["pid"] not in (None, engine_pid)

    wait_until(restarted, timeout=30, what="a new engine ready after the restart")
    wait_until(routed, timeout=30, what="the engine back after its restart")
    answers = _answers(registry, router, api, tokens, key)
    state_file = tmp_path / "state" / "registry.json"
    digests = [hashlib.sha256(lease.encode()).hexdigest() for lease in sitter_leases]

    def kept_as_digests() -> bool:
        return state_file.exists() and all(d in state_file.read_text() for d in digests)

    wait_until(kept_as_digests, timeout=10, what="the state file to hold the leases' digests")

    for proc in (router_proc, sitter_proc, registry_proc):
        proc.stop()
    kept = {*tokens_dir.iterdir(), *lease_files}  # where the secrets belong
    logs = {p: p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file()}
    logs = {p: text for p, text in logs.items() if p not in kept}
    assert "registered secret-engine" in registry_proc.log()
    assert list((tmp_path / "engine-logs").rglob("*.log")), list(logs)
    secret_values = [*tokens.values(), *wrong.values(), *leases, *sitter_leases]
    for secret in secret_values:
        leaks = [str(p) for p, text in logs.items() if secret in text]
        leaks += [url for url, text in answers.items() if secret in text]
        assert not leaks, f"{secret[:8]}… found in {leaks}"
