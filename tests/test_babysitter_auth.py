"""The babysitter's control endpoints need its registry token; its reads stay open.

``POST /drain``, ``/restart`` and ``/model`` with no token or a wrong one are a
401 in the OpenAI shape and leave the engine alone (not drained, not restarted,
no swap); with the token they work. Without a token they are open, and the
babysitter says so at start.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from procs import Spawn, start_babysitter, status, wait_state, wait_until

TOKEN = "sitter-token-0123456789"
CONTROL = (("/drain", None), ("/stop", None), ("/restart", None), ("/model", {"model": "other"}))


def _refused(resp: httpx.Response) -> None:
    assert resp.status_code == 401, resp.text
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "invalid_token"
    assert "Traceback" not in resp.text


def test_control_endpoints_need_the_registry_token(spawn: Spawn) -> None:
    proc, _, api = start_babysitter(spawn, None, "guarded", "--registry-token", TOKEN)
    before = status(api)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        for path, body in CONTROL:
            _refused(httpx.post(api + path, json=body, headers=headers, timeout=10))
    after = status(api)
    assert (after["state"], after["pid"], after["restarts"]) == ("ready", before["pid"], 0)
    assert after["swap"] is None and after["model"] == before["model"]
    for read in ("/health", "/status", "/models", "/metrics", "/openapi.json"):
        assert httpx.get(api + read, timeout=10).status_code == 200, read
    assert "need no token" not in proc.log()

    auth = {"Authorization": f"Bearer {TOKEN}"}
    drained = httpx.post(api + "/drain", headers=auth, timeout=30)
    assert drained.status_code == 200 and drained.json()["drained"] is True
    assert status(api)["state"] == "drained"
    assert httpx.post(api + "/restart", headers=auth, timeout=10).status_code == 202
    st = wait_state(api, "ready")
    assert st["pid"] != before["pid"]


def test_control_endpoints_without_a_token_are_open_and_warned(spawn: Spawn) -> None:
    proc, _, api = start_babysitter(spawn, None, "open")
    wait_until(lambda: "need no token" in proc.log(), timeout=5, what="the warning")
    line = next(x for x in proc.log().splitlines() if "need no token" in x)
    assert "WARNING" in line
    assert all(path in line for path in ("POST /drain", "POST /restart", "POST /model"))
    assert httpx.post(api + "/drain", timeout=30).status_code == 200


def test_the_token_may_come_from_a_file(spawn: Spawn, tmp_path: Path) -> None:
    token_file = tmp_path / "registry-token"
    token_file.write_text(TOKEN + "\n")
    proc, _, api = start_babysitter(spawn, None, "filed", "--registry-token-file", str(token_file))
    _refused(httpx.post(api + "/restart", timeout=10))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.post(api + "/restart", headers=auth, timeout=10).status_code == 202
    wait_state(api, "ready")
    assert TOKEN not in proc.log()
