"""A batch stack of real processes for the batch service's end-to-end tests.

Simulated engines behind a router (static services, an API keys file with two tenants,
``--batch-url`` and ``--batch-token``), and ``llmsvc batch`` sending its lines back
through that router with the same token. The ports of the router and of the batch
service are chosen before either starts, since each names the other.

:class:`BatchStack` gives an ``openai`` client per tenant (base URL: the router, as a
user has it), direct reads of the batch service with its token, and
:meth:`BatchStack.restart_batch` to start the batch service again on the same port and
``--data-dir`` (after a SIGKILL).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson

from procs import HOST, Proc, Spawn, free_port, start_sim_engine, wait_until

BATCH_TOKEN = "batch-secret-e2e"
ADMIN_TOKEN = "router-admin-e2e"
KEYS = {"alice": "k-alice", "bob": "k-bob"}  # tenant name -> API key
KEYS_YAML = "".join(f"- {{name: {name}, key: {key}}}\n" for name, key in KEYS.items())
# Fast SLA bookkeeping and retries, so that a test sees each change within a second.
FAST_BATCH_FLAGS = ("--tick", "0.2", "--sample-interval", "0.5", "--retry-backoff", "0.1")


@dataclass(frozen=True)
class Engine:
    """A simulated engine to start: its name, the model it serves, extra sim-engine flags."""

    name: str
    model: str = "m"
    args: tuple[str, ...] = ()


@dataclass
class BatchStack:
    spawn: Spawn
    router: str  # the router's base URL (what clients use)
    batch: str  # the batch service's base URL
    data_dir: Path
    batch_args: list[str]
    batch_proc: Proc
    engines: dict[str, int] = field(default_factory=dict)  # name -> port
    starts: int = 1

    def client(self, tenant: str, *, max_retries: int = 2) -> openai.OpenAI:
        """The official client of ``tenant`` (a name of :data:`KEYS`), through the router."""
        return openai.OpenAI(
            base_url=f"{self.router}/v1", api_key=KEYS[tenant], max_retries=max_retries
        )

    def get(self, path: str, *, tenant: str | None = None, timeout: float = 5) -> httpx.Response:
        """GET on the batch service itself with its token (as the router's admin without
        ``tenant``)."""
        headers = {"Authorization": f"Bearer {BATCH_TOKEN}"}
        if tenant is not None:
            headers["X-Llmsvc-Tenant"] = tenant
        return httpx.get(f"{self.batch}{path}", headers=headers, timeout=timeout)

    def batch_object(self, batch_id: str) -> dict[str, Any]:
        resp = self.get(f"/v1/batches/{batch_id}")
        assert resp.status_code == 200, f"GET batch {batch_id}: {resp.status_code} {resp.text}"
        data: dict[str, Any] = resp.json()
        return data

    def router_metrics(self) -> str:
        resp = httpx.get(
            f"{self.router}/metrics",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=5,
        )
        assert resp.status_code == 200, resp.text
        return resp.text

    def batch_metrics(self) -> str:
        resp = self.get("/metrics")
        assert resp.status_code == 200, resp.text
        return resp.text

    def restart_batch(self) -> Proc:
        """Start the batch service again (same port, same --data-dir), once it answers."""
        assert not self.batch_proc.alive(), "the batch service still runs"
        self.starts += 1
        self.batch_proc = self.spawn(f"batch-{self.starts}", *self.batch_args)
        wait_batch_ready(self.batch_proc, self.batch)
        return self.batch_proc


def wait_batch_ready(proc: Proc, url: str, *, timeout: float = 30) -> None:
    """Until ``/health`` answers 200 with the token; fails early with the log if it exits."""

    def ready() -> bool:
        if not proc.alive():
            raise AssertionError(
                f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log()[-3000:]}"
            )
        try:
            resp = httpx.get(
                f"{url}/health", headers={"Authorization": f"Bearer {BATCH_TOKEN}"}, timeout=2
            )
        except httpx.HTTPError:
            return False
        return resp.status_code == 200

    wait_until(ready, timeout=timeout, interval=0.1, what=f"{proc.name} /health")


def start_batch_stack(
    spawn: Spawn,
    tmp: Path,
    engines: Sequence[Engine],
    *,
    batch_flags: Sequence[str] = (),
    router_flags: Sequence[str] = (),
) -> BatchStack:
    """Engines, a router in front of them, and the batch service; each waited for."""
    records = []
    ports = {}
    for engine in engines:
        _, port = start_sim_engine(spawn, engine.name, "--model-name", engine.model, *engine.args)
        ports[engine.name] = port
        records.append(
            {
                "name": engine.name,
                "host": HOST,
                "port": port,
                "metadata": {"models": [engine.model]},
            }
        )
    static = tmp / "services.json"
    static.write_bytes(orjson.dumps({"services": records}))
    keys = tmp / "keys.yaml"
    keys.write_text(KEYS_YAML)
    router_port, batch_port = free_port(), free_port()
    router_url, batch_url = f"http://{HOST}:{router_port}", f"http://{HOST}:{batch_port}"
    router = spawn(
        "router", "router", "--port", str(router_port), "--static-services", str(static),
        "--api-keys-file", str(keys), "--admin-token", ADMIN_TOKEN,
        "--batch-url", batch_url, "--batch-token", BATCH_TOKEN,
        "--health-interval", "0.5", "--health-timeout", "1", *router_flags,
    )  # fmt: skip
    data_dir = tmp / "batch-data"
    batch_args = [
        "batch", "--port", str(batch_port), "--token", BATCH_TOKEN,
        "--router-url", router_url, "--data-dir", str(data_dir),
        *FAST_BATCH_FLAGS, *batch_flags,
    ]  # fmt: skip
    batch = spawn("batch", *batch_args)
    router.wait_http(f"{router_url}/health")
    wait_batch_ready(batch, batch_url)
    return BatchStack(
        spawn=spawn,
        router=router_url,
        batch=batch_url,
        data_dir=data_dir,
        batch_args=batch_args,
        batch_proc=batch,
        engines=ports,
    )


def chat_lines(
    count: int, *, model: str = "m", max_tokens: int = 4, prefix: str = "req"
) -> tuple[bytes, list[str]]:
    """A JSONL input of ``count`` chat lines and their custom_ids, in order."""
    ids = [f"{prefix}-{i:05d}" for i in range(count)]
    lines = [
        orjson.dumps(
            {
                "custom_id": custom_id,
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": model,
                    "messages": [{"role": "user", "content": f"say {custom_id}"}],
                    "max_tokens": max_tokens,
                },
            }
        )
        for custom_id in ids
    ]
    return b"\n".join(lines) + b"\n", ids


def jsonl(content: bytes) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL text (blank lines skipped)."""
    return [orjson.loads(line) for line in content.splitlines() if line.strip()]


def wait_status(
    stack: BatchStack, batch_id: str, statuses: Sequence[str], *, timeout: float
) -> dict[str, Any]:
    """Poll the batch (with the token) until its status is one of ``statuses``."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        last = stack.batch_object(batch_id)
        if last["status"] in statuses:
            return last
        time.sleep(0.2)
    raise AssertionError(
        f"batch {batch_id} not {'/'.join(statuses)} after {timeout}s: status "
        f"{last.get('status')}, counts {last.get('request_counts')}, llmsvc {last.get('llmsvc')}"
    )
