"""The router in front of real simulated engines: routing, errors, views, API keys."""

from __future__ import annotations

import gzip
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from llmsvc.router.app import create_app
from llmsvc.router.settings import RouterSettings
from procs import HOST, ProcGroup, free_port

Client = TestClient[web.Request, web.Application]
MakeRouter = Callable[..., Awaitable[Client]]
CHAT = "/v1/chat/completions"


def chat_body(model: str = "m", stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 3,
        "stream": stream,
        **extra,
    }


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[dict[str, Any]]]:
    """Three sim engines: e1 and e2 serve m, e3 serves other and m2."""
    group = ProcGroup(tmp_path_factory.mktemp("engines"))
    specs = [("e1", "m"), ("e2", "m"), ("e3", "other,m2")]
    records, procs = [], []
    try:
        for name, models in specs:
            port = free_port()
            args = ["--port", str(port), "--model-name", models, "--engine-id", name]
            procs.append(group(name, "sim-engine", *args, "--time-scale", "0"))
            meta = {"models": models.split(",")}
            records.append({"name": name, "host": HOST, "port": port, "metadata": meta})
        for proc, rec in zip(procs, records, strict=True):
            proc.wait_http(f"http://{HOST}:{rec['port']}/health")
        yield records
    finally:
        group.stop_all()


@pytest.fixture
def make_router(
    aiohttp_client: Callable[..., Awaitable[Client]],
    engines: list[dict[str, Any]],
    tmp_path: Path,
) -> MakeRouter:
    async def make(records: list[dict[str, Any]] | None = None, **options: Any) -> Client:
        path = tmp_path / "services.yaml"
        path.write_text(yaml.safe_dump({"services": engines if records is None else records}))
        settings = RouterSettings(static_services=str(path), **options)
        return await aiohttp_client(create_app(settings, registry=CollectorRegistry()))

    return make


async def send(client: Client, body: dict[str, Any], path: str = CHAT) -> tuple[int, str, Any]:
    """(status, backend header, parsed body or the list of SSE data lines)."""
    resp = await client.post(path, json=body)
    raw = await resp.read()
    backend = resp.headers.get("X-Llmsvc-Backend", "")
    if resp.headers.get("Content-Type", "").startswith("text/event-stream"):
        lines = [line[6:] for line in raw.decode().splitlines() if line.startswith("data: ")]
        return resp.status, backend, lines
    return resp.status, backend, orjson.loads(raw)


def assert_error_shape(body: Any) -> dict[str, Any]:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return dict(body["error"])


async def test_routes_by_model_and_alternates(make_router: MakeRouter) -> None:
    client = await make_router()
    served = []
    for stream in (False, False, True, True) * 2:
        status, backend, body = await send(client, chat_body(stream=stream))
        assert status == 200
        if stream:
            assert body[-1] == "[DONE]"
            engine = {orjson.loads(x)["system_fingerprint"] for x in body[:-1]}
        else:
            engine = {body["system_fingerprint"]}
        assert engine == {backend}
        served.append(backend)
    assert served == ["e1", "e2"] * 4
    for _ in range(3):
        _, backend, _ = await send(client, chat_body("other"))
        assert backend == "e3"


async def test_every_inference_path_with_and_without_v1(make_router: MakeRouter) -> None:
    client = await make_router()
    for prefix in ("/v1", ""):
        status, _, body = await send(client, chat_body(), prefix + "/chat/completions")
        assert (status, body["object"]) == (200, "chat.completion")
        status, _, body = await send(
            client, {"model": "m", "prompt": "hi"}, prefix + "/completions"
        )
        assert (status, body["object"]) == (200, "text_completion")
        status, _, body = await send(client, {"model": "m2", "input": "hi"}, prefix + "/embeddings")
        assert (status, body["object"]) == (200, "list")


async def test_unknown_model_is_404_model_not_found_in_openais_words(
    make_router: MakeRouter,
) -> None:
    client = await make_router()
    status, backend, body = await send(client, chat_body("nope"))
    assert (status, backend) == (404, "")
    error = assert_error_shape(body)
    assert error["message"] == "The model `nope` does not exist or you do not have access to it."
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "model_not_found",
        None,
    )


async def test_known_model_with_nothing_healthy_is_503_with_the_contract_message(
    make_router: MakeRouter, engines: list[dict[str, Any]]
) -> None:
    """A model whose only backend fails its active check is known: 503, and listed."""
    dead = {"name": "dead", "host": HOST, "port": free_port(), "metadata": {"models": ["gone"]}}
    client = await make_router([*engines, dead], hold_timeout=0)  # no hold: the 503 at once
    status, backend, body = await send(client, chat_body("gone"))
    assert (status, backend) == (503, "")
    error = assert_error_shape(body)
    assert error["message"] == "No healthy services available for model 'gone'"
    assert error["type"] == "service_unavailable_error"
    models = (await (await client.get("/v1/models")).json())["data"]
    assert sorted(card["id"] for card in models) == ["gone", "m", "m2", "other"]


async def test_models_is_the_union_each_id_once(make_router: MakeRouter) -> None:
    client = await make_router()
    for path in ("/v1/models", "/models"):
        resp = await client.get(path)
        body = await resp.json()
        assert body["object"] == "list"
        assert sorted(card["id"] for card in body["data"]) == ["m", "m2", "other"]


async def test_upstream_4xx_passes_through_unretried(make_router: MakeRouter) -> None:
    client = await make_router()
    status, backend, body = await send(client, {"model": "m", "messages": []})
    assert status == 400 and backend == "e1"
    assert assert_error_shape(body)["type"] == "invalid_request_error"
    stats = await (await client.get("/stats")).json()
    assert stats["backends"]["e1"]["errors"] == 0
    assert stats["backends"]["e2"]["requests"] == 0


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_json"),
        (b"", 400, "invalid_json"),
        (b'{"messages": []}', 400, "missing_model"),
        (b'{"model": 7}', 400, "invalid_model"),
        (b'{"model": "m", "stream": "yes"}', 400, "invalid_value"),
        (b'{"model": "m", "pad": "' + b"x" * 5000 + b'"}', 413, "body_too_large"),
    ],
)
async def test_bad_bodies(make_router: MakeRouter, data: bytes, status: int, code: str) -> None:
    client = await make_router(max_body_bytes=4096)
    resp = await client.post(CHAT, data=data, headers={"Content-Type": "application/json"})
    assert resp.status == status
    assert assert_error_shape(await resp.json())["code"] == code


async def test_unknown_path_and_wrong_method(make_router: MakeRouter) -> None:
    client = await make_router()
    resp = await client.get("/v1/nothing")
    assert resp.status == 404
    assert assert_error_shape(await resp.json())["code"] == "not_found"
    resp = await client.get(CHAT)
    assert resp.status == 405 and resp.headers["Allow"] == "POST"
    assert assert_error_shape(await resp.json())["code"] == "method_not_allowed"


async def test_api_keys(make_router: MakeRouter) -> None:
    client = await make_router(api_keys=["k1", "k2"])
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "k1"}):
        for method, path in (("POST", CHAT), ("GET", "/v1/models"), ("GET", "/models")):
            resp = await client.request(method, path, json=chat_body(), headers=headers)
            assert resp.status == 401, (headers, path)
            assert resp.headers["WWW-Authenticate"] == "Bearer"
            assert assert_error_shape(await resp.json())["code"] == "invalid_api_key"
    resp = await client.post(CHAT, json=chat_body(), headers={"Authorization": "Bearer k2"})
    assert resp.status == 200
    for path in ("/health", "/metrics"):
        assert (await client.get(path)).status == 200


async def test_health_stats_services_and_metrics(make_router: MakeRouter) -> None:
    client = await make_router()
    for stream in (False, True, False, True):
        assert (await send(client, chat_body(stream=stream)))[0] == 200
    await send(client, chat_body("nope"))
    await client.post(CHAT, data=b"{")
    health = await (await client.get("/health")).json()
    assert health == {"status": "ok", "backends": 3, "healthy_backends": 3, "models": 3}

    stats = await (await client.get("/stats")).json()
    e1 = stats["backends"]["e1"]
    assert (e1["requests"], e1["errors"], e1["in_flight"]) == (2, 0, 0)
    assert e1["mean_response_time_s"] > 0 and e1["mean_ttft_s"] > 0
    assert stats["models"]["m"]["requests"] == 4 and "nope" not in stats["models"]

    services = (await (await client.get("/services")).json())["services"]
    view = {s["name"]: s for s in services}
    assert view["e3"]["eligible"] and view["e3"]["source"] == "static"
    assert view["e3"]["record"]["metadata"]["models"] == ["other", "m2"]

    text = await (await client.get("/metrics")).text()
    for line in (
        'llmsvc_router_requests_total{backend="e1",model_name="m",status="200"} 2.0',
        'llmsvc_router_requests_total{backend="_none",model_name="_unknown",status="404"} 1.0',
        'llmsvc_router_requests_total{backend="_none",model_name="_unknown",status="400"} 1.0',
        'llmsvc_router_request_duration_seconds_count{model_name="m"} 4.0',
        'llmsvc_router_time_to_first_byte_seconds_count{model_name="m"} 4.0',
        'llmsvc_router_in_flight{backend="e2"} 0.0',
        'llmsvc_router_backend_healthy{backend="e3"} 1.0',
        "llmsvc_router_registry_up 0.0",
    ):
        assert line in text, line
    openapi = await (await client.get("/openapi.json")).json()
    assert "/v1/chat/completions" in openapi["paths"]


async def test_gzip_bodies_reach_real_engines_decoded(make_router: MakeRouter) -> None:
    """Three gzip requests are served and leave both engines of ``m`` in rotation (before,
    the engine got the header with a decoded body, answered 500, and both were ejected)."""
    client = await make_router()
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    served = set()
    for _ in range(4):
        resp = await client.post(
            CHAT, data=gzip.compress(orjson.dumps(chat_body())), headers=headers
        )
        assert resp.status == 200, await resp.text()
        served.add(resp.headers["X-Llmsvc-Backend"])
    assert served == {"e1", "e2"}
    status, _, body = await send(client, {**chat_body(), "stream": None})  # OpenAI: false
    assert status == 200 and body["object"] == "chat.completion"
