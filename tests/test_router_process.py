"""The real ``llmsvc router`` process: the openai client through it, TLS, clean shutdown."""

from __future__ import annotations

import shutil
import signal
import ssl
import subprocess
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from procs import HOST, Spawn, free_port, start_sim_engine, wait_until


def start_engine(spawn: Spawn, name: str) -> dict[str, object]:
    _, port = start_sim_engine(spawn, name)
    return {"name": name, "host": HOST, "port": port, "metadata": {"models": ["m"]}}


def test_openai_client_through_the_router(spawn: Spawn, tmp_path: Path) -> None:
    records = [start_engine(spawn, "e1"), start_engine(spawn, "e2")]
    static = tmp_path / "services.json"
    static.write_bytes(orjson.dumps({"services": records}))
    port = free_port()
    router = spawn(
        "router", "router", "--port", str(port), "--static-services", str(static),
        "--api-keys", "k",
    )  # fmt: skip
    base = f"http://{HOST}:{port}"
    router.wait_http(f"{base}/health")
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="k", max_retries=0)

    assert [m.id for m in client.models.list().data] == ["m"]
    fingerprints = []
    for _ in range(2):
        chat = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        assert chat.usage is not None and chat.choices[0].message.content
        fingerprints.append(chat.system_fingerprint)
    assert sorted(f or "" for f in fingerprints) == ["e1", "e2"]
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True
    )
    chunks = list(stream)
    assert chunks[-1].choices[0].finish_reason == "length"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0).models.list()

    router.signal(signal.SIGTERM)
    assert router.popen.wait(10) == 0
    assert "Traceback" not in router.log()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a certificate")
def test_tls(spawn: Spawn, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", f"/CN={HOST}", "-addext", f"subjectAltName=IP:{HOST}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    records = [start_engine(spawn, "e1")]
    static = tmp_path / "services.json"
    static.write_bytes(orjson.dumps(records))
    port = free_port()
    spawn(
        "router", "router", "--port", str(port), "--static-services", str(static),
        "--tls-cert", str(cert), "--tls-key", str(key),
    )  # fmt: skip
    verify = ssl.create_default_context(cafile=str(cert))
    url = f"https://{HOST}:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/health", verify=verify, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, timeout=20, what="router over TLS")
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    resp = httpx.post(f"{url}/v1/chat/completions", json=body, verify=verify, timeout=10)
    assert resp.status_code == 200 and resp.headers["x-llmsvc-backend"] == "e1"
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{HOST}:{port}/health", timeout=2).raise_for_status()
