"""The router's side of the batch API: /v1/files* and /v1/batches* forwarded to the batch
service (bodies streamed both ways, the caller's tenant told, the client's claims dropped),
the batch token's tenants (their models, their class capped at standard), and
X-Llmsvc-Contention on the answers to batch-class requests.

The router runs in process on a real socket (aiohttp's test server); the batch service and
the engine are stand-in aiohttp servers on 127.0.0.1 that record what they received."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from llmsvc.router.app import ROUTER, create_app
from llmsvc.router.settings import RouterSettings
from procs import HOST, Spawn, free_port
from procs import start_router as start_router_process

Client = TestClient[web.Request, web.Application]
AiohttpClient = Callable[..., Awaitable[Client]]

BATCH_TOKEN = "batch-secret"
ADMIN_TOKEN = "admin-secret"
KEYS = """
- {name: team-a, key: sk-a}
- {name: team-b, key: sk-b, models: [other]}
- {name: team-c, key: sk-c, max_priority: critical}
"""
CHAT = "/v1/chat/completions"
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
MB = 1024 * 1024


@dataclass
class Seen:
    method: str
    path_qs: str
    headers: CIMultiDict[str]
    size: int
    digest: str


@dataclass
class BatchStandIn:
    """A stand-in batch service: records every request (its body hashed as it streams in)
    and answers GET .../content with ``download`` bytes, anything else with JSON."""

    seen: list[Seen] = field(default_factory=list)
    download: bytes = b""
    port: int = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        sha = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_chunked(65536):
            sha.update(chunk)
            size += len(chunk)
        self.seen.append(
            Seen(
                request.method, request.path_qs, CIMultiDict(request.headers), size, sha.hexdigest()
            )
        )
        if request.path.endswith("/content"):
            return web.Response(body=self.download, content_type="application/octet-stream")
        status = 201 if request.method == "POST" else 200
        return web.json_response({"object": "list", "data": [], "got": size}, status=status)


@dataclass
class GatedEngine:
    """A stand-in engine whose answers wait for ``gate`` (set by the test)."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: int = 0
    seen: list[CIMultiDict[str]] = field(default_factory=list)
    port: int = 0

    async def chat(self, request: web.Request) -> web.Response:
        await request.read()
        self.arrived += 1
        self.seen.append(CIMultiDict(request.headers))
        await asyncio.wait_for(self.gate.wait(), 20)
        return web.json_response({"choices": [], "usage": {"prompt_tokens": 1}})

    async def health(self, _: web.Request) -> web.Response:
        return web.json_response({})


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, HOST, port).start()
    try:
        yield port
    finally:
        await runner.cleanup()


@pytest.fixture
async def batch_service() -> AsyncIterator[BatchStandIn]:
    stand_in = BatchStandIn()
    app = web.Application(client_max_size=1024 * MB)
    app.router.add_route("*", "/{tail:.*}", stand_in.handle)
    async with serving(app) as port:
        stand_in.port = port
        yield stand_in


@pytest.fixture
async def engine() -> AsyncIterator[GatedEngine]:
    stand_in = GatedEngine()
    app = web.Application()
    app.router.add_post(CHAT, stand_in.chat)
    app.router.add_get("/health", stand_in.health)
    async with serving(app) as port:
        stand_in.port = port
        yield stand_in
        stand_in.gate.set()


def router_settings(tmp_path: Path, engine_port: int | None = None, **options: Any) -> Any:
    records = []
    if engine_port is not None:
        records = [{"name": "e", "host": HOST, "port": engine_port, "metadata": {"models": ["m"]}}]
    services = tmp_path / "services.json"
    services.write_bytes(orjson.dumps(records))
    options.setdefault("health_interval", 60)
    return RouterSettings(static_services=str(services), **options)


async def start_router(
    aiohttp_client: AiohttpClient, settings: RouterSettings, registry: CollectorRegistry
) -> Client:
    return await aiohttp_client(create_app(settings, registry=registry))


def keys_file(tmp_path: Path) -> str:
    path = tmp_path / "keys.yaml"
    path.write_text(KEYS)
    return str(path)


def bearer(key: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **extra}


def tenant_requests(registry: CollectorRegistry, tenant: str, priority: str) -> float:
    value = registry.get_sample_value(
        "llmsvc_router_tenant_requests_total", {"tenant": tenant, "priority": priority}
    )
    return value or 0.0


@pytest.fixture
async def keyed_router(
    aiohttp_client: AiohttpClient, tmp_path: Path, batch_service: BatchStandIn
) -> Client:
    settings = router_settings(
        tmp_path,
        api_keys_file=keys_file(tmp_path),
        admin_token=ADMIN_TOKEN,
        batch_url=f"http://{HOST}:{batch_service.port}/",
        batch_token=BATCH_TOKEN,
        max_body_bytes=MB,
    )
    return await start_router(aiohttp_client, settings, CollectorRegistry())


async def test_upload_is_streamed_past_max_body_bytes_with_the_callers_tenant(
    keyed_router: Client, batch_service: BatchStandIn
) -> None:
    payload = (b'{"custom_id": "x", "body": {}}\n' * (20 * MB // 31 + 1))[: 20 * MB]
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", payload, filename="in.jsonl", content_type="application/jsonl")
    # The client claims to be another tenant, and an admin: both claims are dropped.
    headers = bearer("sk-a", **{"X-Llmsvc-Tenant": "team-b", "X-Llmsvc-Admin": "1"})
    response = await keyed_router.post("/v1/files", data=form, headers=headers)
    assert response.status == 201, await response.text()
    body = await response.json()
    (seen,) = batch_service.seen
    assert seen.method == "POST" and seen.path_qs == "/v1/files"
    assert body["got"] == seen.size > 20 * MB  # the whole multipart body arrived
    assert seen.headers["X-Llmsvc-Tenant"] == "team-a"
    assert "X-Llmsvc-Admin" not in seen.headers
    assert seen.headers["Authorization"] == f"Bearer {BATCH_TOKEN}"
    assert seen.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert seen.headers["X-Request-Id"] == response.headers["X-Request-Id"]


async def test_list_and_download_keep_path_query_status_and_bytes(
    keyed_router: Client, batch_service: BatchStandIn
) -> None:
    batch_service.download = bytes(range(256)) * (3 * MB // 256)
    listed = await keyed_router.get("/v1/batches?limit=2&after=batch_x", headers=bearer("sk-b"))
    assert listed.status == 200 and listed.content_type == "application/json"
    assert (await listed.json())["object"] == "list"
    content = await keyed_router.get("/v1/files/file-1/content", headers=bearer("sk-a"))
    assert content.status == 200 and content.content_type == "application/octet-stream"
    assert await content.read() == batch_service.download
    deleted = await keyed_router.delete("/v1/files/file-1", headers=bearer("sk-a"))
    assert deleted.status == 200
    got = [(s.method, s.path_qs, s.headers["X-Llmsvc-Tenant"]) for s in batch_service.seen]
    assert got == [
        ("GET", "/v1/batches?limit=2&after=batch_x", "team-b"),
        ("GET", "/v1/files/file-1/content", "team-a"),
        ("DELETE", "/v1/files/file-1", "team-a"),
    ]


async def test_admin_token_forwards_no_tenant_and_bad_keys_get_401(
    keyed_router: Client, batch_service: BatchStandIn
) -> None:
    response = await keyed_router.get(
        "/v1/batches", headers=bearer(ADMIN_TOKEN, **{"X-Llmsvc-Tenant": "team-a"})
    )
    assert response.status == 200
    (seen,) = batch_service.seen
    assert "X-Llmsvc-Tenant" not in seen.headers
    assert seen.headers["Authorization"] == f"Bearer {BATCH_TOKEN}"
    for headers in ({}, bearer("sk-wrong")):
        refused = await keyed_router.get("/v1/batches", headers=headers)
        assert refused.status == 401
        assert (await refused.json())["error"]["code"] == "invalid_api_key"
    # The admin token opens the batch paths only, not inference.
    chat = await keyed_router.post(CHAT, json=BODY, headers=bearer(ADMIN_TOKEN))
    assert chat.status == 401
    assert len(batch_service.seen) == 1


async def test_without_keys_the_tenant_is_anonymous_and_no_token_is_sent(
    aiohttp_client: AiohttpClient, tmp_path: Path, batch_service: BatchStandIn
) -> None:
    settings = router_settings(tmp_path, batch_url=f"http://{HOST}:{batch_service.port}")
    client = await start_router(aiohttp_client, settings, CollectorRegistry())
    response = await client.get("/v1/files?purpose=batch", headers=bearer("anything"))
    assert response.status == 200
    (seen,) = batch_service.seen
    assert seen.path_qs == "/v1/files?purpose=batch"
    assert seen.headers["X-Llmsvc-Tenant"] == "anonymous"
    assert "Authorization" not in seen.headers  # neither the client's nor a batch token


async def test_without_batch_url_404_and_unreachable_502(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    plain = await start_router(aiohttp_client, router_settings(tmp_path), CollectorRegistry())
    for method, path in (("GET", "/v1/batches"), ("POST", "/v1/files"), ("GET", "/v1/files/x")):
        response = await plain.request(method, path)
        assert response.status == 404
        error = (await response.json())["error"]
        assert error["code"] == "batch_not_configured"
        assert error["message"] == "this router has no batch service (--batch-url)"
    gone = router_settings(tmp_path, batch_url=f"http://{HOST}:{free_port()}")
    client = await start_router(aiohttp_client, gone, CollectorRegistry())
    response = await client.post("/v1/batches", json={"input_file_id": "file-1"})
    assert response.status == 502
    assert (await response.json())["error"]["code"] == "batch_unavailable"


async def test_batch_token_runs_as_the_named_tenant_capped_at_standard(
    aiohttp_client: AiohttpClient, tmp_path: Path, engine: GatedEngine
) -> None:
    engine.gate.set()
    registry = CollectorRegistry()
    settings = router_settings(
        tmp_path, engine.port, api_keys_file=keys_file(tmp_path), batch_token=BATCH_TOKEN
    )
    client = await start_router(aiohttp_client, settings, registry)

    async def chat(tenant: str | None, priority: str = "critical") -> aiohttp.ClientResponse:
        headers = bearer(BATCH_TOKEN, **{"X-Llmsvc-Priority": priority})
        if tenant is not None:
            headers["X-Llmsvc-Tenant"] = tenant
        return await client.post(CHAT, json=BODY, headers=headers)

    # team-c's own key may ask for critical; through the batch token it gets standard.
    assert (await chat("team-c")).status == 200
    assert tenant_requests(registry, "team-c", "standard") == 1
    assert tenant_requests(registry, "team-c", "critical") == 0
    assert (await chat("team-c", "batch")).status == 200
    assert tenant_requests(registry, "team-c", "batch") == 1
    # team-b's models leave m out: its restriction applies to the batch token's requests.
    refused = await chat("team-b")
    assert refused.status == 403
    assert (await refused.json())["error"]["code"] == "model_not_allowed"
    unknown = await chat("team-z")
    assert unknown.status == 401
    assert (await unknown.json())["error"]["code"] == "invalid_api_key"
    # No header: the tenant 'batch', capped at standard too.
    assert (await chat(None)).status == 200
    assert tenant_requests(registry, "batch", "standard") == 1


async def test_batch_token_without_keys_is_the_batch_tenant(
    aiohttp_client: AiohttpClient, tmp_path: Path, engine: GatedEngine
) -> None:
    engine.gate.set()
    registry = CollectorRegistry()
    settings = router_settings(tmp_path, engine.port, batch_token=BATCH_TOKEN)
    client = await start_router(aiohttp_client, settings, registry)
    headers = bearer(BATCH_TOKEN, **{"X-Llmsvc-Tenant": "team-a", "X-Llmsvc-Priority": "critical"})
    assert (await client.post(CHAT, json=BODY, headers=headers)).status == 200
    assert tenant_requests(registry, "batch", "standard") == 1
    assert "Authorization" not in engine.seen[-1]  # the secret never reaches an engine
    # Anyone else is anonymous, as without a batch token, and may still ask for critical;
    # with no keys to check, its own Authorization goes on to the engine as before.
    plain = bearer("engine-key", **{"X-Llmsvc-Tenant": "team-a", "X-Llmsvc-Priority": "critical"})
    assert (await client.post(CHAT, json=BODY, headers=plain)).status == 200
    assert tenant_requests(registry, "anonymous", "critical") == 1
    assert engine.seen[-1]["Authorization"] == "Bearer engine-key"


async def test_without_batch_token_the_tenant_header_means_nothing(
    aiohttp_client: AiohttpClient, tmp_path: Path, engine: GatedEngine
) -> None:
    engine.gate.set()
    registry = CollectorRegistry()
    settings = router_settings(tmp_path, engine.port, api_keys_file=keys_file(tmp_path))
    client = await start_router(aiohttp_client, settings, registry)
    posing = bearer("sk-a", **{"X-Llmsvc-Tenant": "team-c"})
    assert (await client.post(CHAT, json=BODY, headers=posing)).status == 200
    assert tenant_requests(registry, "team-a", "standard") == 1
    assert tenant_requests(registry, "team-c", "standard") == 0
    refused = await client.post(CHAT, json=BODY, headers=bearer(BATCH_TOKEN))
    assert refused.status == 401


async def test_contention_counts_higher_classes_waiting_for_the_model(
    aiohttp_client: AiohttpClient, tmp_path: Path, engine: GatedEngine
) -> None:
    settings = router_settings(tmp_path, engine.port, backend_concurrency=1, queue_timeout=30)
    client = await start_router(aiohttp_client, settings, CollectorRegistry())
    flow = client.app[ROUTER].flow
    batch = {"X-Llmsvc-Priority": "batch"}

    async def until(check: Callable[[], bool]) -> None:
        for _ in range(1000):  # 10 s at most
            if check():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("not within 10 s")

    # Alone: nothing of a higher class waits.
    engine.gate.set()
    alone = await client.post(CHAT, json=BODY, headers=batch)
    assert alone.status == 200 and alone.headers["X-Llmsvc-Contention"] == "0"
    standard = await client.post(CHAT, json=BODY)
    assert "X-Llmsvc-Contention" not in standard.headers  # only batch-class answers say it

    # The batch request holds the one slot; a standard one waits for it meanwhile.
    engine.gate.clear()
    first = asyncio.ensure_future(client.post(CHAT, json=BODY, headers=batch))
    await until(lambda: engine.arrived == 3)
    waiting = asyncio.ensure_future(client.post(CHAT, json=BODY))
    await until(lambda: flow.contention("m") == 1)
    engine.gate.set()
    contended = await first
    assert contended.status == 200
    assert contended.headers["X-Llmsvc-Contention"] == "1"
    assert (await waiting).status == 200


async def test_the_router_process_streams_a_large_upload(
    spawn: Spawn, tmp_path: Path, batch_service: BatchStandIn
) -> None:
    """The real ``llmsvc router`` (its flags, its server): a 20 MB upload through a router
    whose --max-body-bytes is 1 MB, with the token read from its file."""
    token_file = tmp_path / "batch-token"
    token_file.write_text(BATCH_TOKEN + "\n")
    router, url = await asyncio.to_thread(
        start_router_process,
        spawn,
        None,
        "--api-keys-file", keys_file(tmp_path),
        "--batch-url", f"http://{HOST}:{batch_service.port}/",
        "--batch-token-file", str(token_file),
        "--max-body-bytes", str(MB),
    )  # fmt: skip
    payload = b"x" * (20 * MB)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as client:
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", payload, filename="in.jsonl")
        async with client.post(f"{url}/v1/files", data=form, headers=bearer("sk-c")) as answer:
            assert answer.status == 201, await answer.text()
    (seen,) = batch_service.seen
    assert seen.size > 20 * MB
    assert seen.headers["X-Llmsvc-Tenant"] == "team-c"
    assert seen.headers["Authorization"] == f"Bearer {BATCH_TOKEN}"
    assert "Traceback" not in router.log()


def test_batch_url_must_be_http_and_loses_its_slash() -> None:
    assert RouterSettings(batch_url="http://h:8082/").batch_url == "http://h:8082"
    assert RouterSettings(batch_url="https://b.example").batch_url == "https://b.example"
    for bad in ("ftp://h", "h:8082", "http://"):
        with pytest.raises(ValidationError):
            RouterSettings(batch_url=bad)
