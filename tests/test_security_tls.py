"""Optional TLS on the router and the registry (``--tls-cert``, ``--tls-key``).

A certificate for 127.0.0.1 is made with the ``openssl`` command in the test.
The registry and the router serve HTTPS with it; a babysitter registers with
the registry over HTTPS and the router watches it over HTTPS (both trust the
certificate through ``SSL_CERT_FILE``); a client reaches the engine through
the router over HTTPS. Plain HTTP to a TLS port gets no answer, and a missing
key or an unreadable certificate ends the command with one line.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest

from procs import HOST, Proc, Spawn, free_port, start_babysitter, wait_until

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


@pytest.fixture
def cert(tmp_path: Path) -> tuple[Path, Path]:
    crt, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(crt), "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return crt, key


def _client(crt: Path) -> httpx.Client:
    return httpx.Client(verify=ssl.create_default_context(cafile=str(crt)), timeout=30)


def _wait_https(proc: Proc, url: str, crt: Path) -> None:
    def up() -> bool:
        assert proc.alive(), proc.log()[-2000:]
        try:
            with _client(crt) as client:
                return client.get(url).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, timeout=20, what=url)


def test_router_and_registry_serve_https(spawn: Spawn, cert: tuple[Path, Path]) -> None:
    crt, key = cert
    tls = ("--tls-cert", str(crt), "--tls-key", str(key))
    trust = {"SSL_CERT_FILE": str(crt)}
    reg_port, router_port = free_port(), free_port()
    registry = f"https://{HOST}:{reg_port}"
    reg = spawn("registry", "registry", "--port", str(reg_port), "--token", "t0k", *tls)
    _wait_https(reg, registry + "/health", crt)

    sitter_env_spawn = _with_env(spawn, trust)
    start_babysitter(sitter_env_spawn, registry, "tls-engine", "--registry-token", "t0k")
    router = f"https://{HOST}:{router_port}"
    rtr = spawn(
        "router",
        "router",
        "--port",
        str(router_port),
        "--registry-url",
        registry,
        "--registry-sync-interval",
        "0.5",
        "--registry-token",
        "t0k",
        *tls,
        env=trust,
    )
    _wait_https(rtr, router + "/health", crt)

    with _client(crt) as client:
        token = {"Authorization": "Bearer t0k"}
        assert client.get(registry + "/services/tls-engine", headers=token).status_code == 200

        def routed() -> bool:
            return bool(client.get(router + "/v1/models").json()["data"])

        wait_until(routed, timeout=30, what="the router to read the engine from the registry")
        resp = client.post(
            router + "/v1/chat/completions",
            json={"model": "sim-model", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"]

    # Without the certificate trusted, clients refuse; plain HTTP gets no HTTP answer.
    with pytest.raises(httpx.ConnectError):
        httpx.get(router + "/health", timeout=10)
    for port in (reg_port, router_port):
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://{HOST}:{port}/health", timeout=10)


def _with_env(spawn: Spawn, env: dict[str, str]) -> Spawn:
    """``spawn`` with ``env`` added to every process's environment."""

    def start(name: str, *args: str, env: dict[str, str] | None = None, raw: bool = False) -> Proc:
        return spawn(name, *args, env={**extra, **(env or {})}, raw=raw)

    extra = env
    return start


@pytest.mark.parametrize("command", ["router", "registry"])
def test_bad_tls_options_end_with_one_line(
    spawn: Spawn, cert: tuple[Path, Path], tmp_path: Path, command: str
) -> None:
    crt, key = cert
    missing = tmp_path / "missing.pem"
    cases = [
        (("--tls-cert", str(crt)), "--tls-key"),
        (("--tls-cert", str(missing), "--tls-key", str(key)), "--tls-cert"),
        (("--tls-cert", str(key), "--tls-key", str(crt)), "--tls-cert"),
    ]
    anonymous = ("--allow-anonymous-writes",) if command == "registry" else ()
    for i, (args, words) in enumerate(cases):
        proc = spawn(f"{command}-{i}", command, "--port", str(free_port()), *anonymous, *args)
        assert proc.popen.wait(30) == 2, proc.log()
        log = proc.log().strip()
        assert words in log and "Traceback" not in log, log
        assert len(log.splitlines()) == 1, log
