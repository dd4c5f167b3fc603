"""Every endpoint of the simulated engine, in process, with ``time_scale=0``."""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from llmsvc.simengine.app import create_app
from llmsvc.simengine.settings import SimEngineSettings

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "Tell me about prefix caching."}]


@pytest.fixture
def make_client(aiohttp_client: Any) -> MakeClient:
    async def make(**overrides: Any) -> Client:
        settings = SimEngineSettings(**{"time_scale": 0.0, **overrides})
        client: Client = await aiohttp_client(create_app(settings, registry=CollectorRegistry()))
        return client

    return make


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    return await make_client(engine_id="eng-a", model_name=["sim-model", "other"])


def sse_payloads(raw: bytes) -> list[str]:
    frames = raw.decode().split("\n\n")
    assert frames[-1] == ""
    assert all(f.startswith("data: ") for f in frames[:-1])
    return [f[len("data: ") :] for f in frames[:-1]]


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.mark.parametrize("path", ["/v1/models", "/models"])
async def test_models(client: Client, path: str) -> None:
    resp = await client.get(path)
    assert resp.status == 200
    assert resp.headers["X-Llmsvc-Engine"] == "eng-a"
    body = await resp.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["sim-model", "other"]
    assert {m["owned_by"] for m in body["data"]} == {"llmsvc-sim"}


@pytest.mark.parametrize("path", [CHAT, "/chat/completions"])
async def test_chat_completion(client: Client, path: str) -> None:
    resp = await client.post(
        path, json={"model": "sim-model", "messages": MESSAGES, "max_tokens": 7}
    )
    assert resp.status == 200
    assert resp.headers["X-Llmsvc-Engine"] == "eng-a"
    body = await resp.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == "sim-model"
    assert body["system_fingerprint"] == "eng-a"
    [choice] = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert len(choice["message"]["content"].split()) == 7
    assert choice["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["completion_tokens"] == 7
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + 7


async def test_output_length_rules(make_client: MakeClient) -> None:
    client = await make_client(default_max_tokens=5)

    async def words(path: str, **body: Any) -> int:
        resp = await client.post(path, json={"model": "sim-model", **body})
        data = await resp.json()
        return int(data["usage"]["completion_tokens"])

    assert await words(CHAT, messages=MESSAGES) == 5
    assert await words(CHAT, messages=MESSAGES, max_tokens=3) == 3
    assert await words(CHAT, messages=MESSAGES, max_tokens=3, max_completion_tokens=4) == 4
    assert await words("/v1/completions", prompt="hi") == 5
    assert await words("/v1/completions", prompt="hi", max_tokens=2) == 2


async def test_same_request_same_text(client: Client) -> None:
    body = {"model": "sim-model", "messages": MESSAGES, "max_tokens": 12}
    texts = set()
    for _ in range(3):
        data = await (await client.post(CHAT, json=body)).json()
        texts.add(data["choices"][0]["message"]["content"])
    assert len(texts) == 1
    other = {**body, "messages": [{"role": "user", "content": "something else"}]}
    data = await (await client.post(CHAT, json=other)).json()
    assert data["choices"][0]["message"]["content"] not in texts


@pytest.mark.parametrize(
    "prompt", ["Once upon a time", ["Once upon a time"], [101, 102, 103], [[101, 102]]]
)
async def test_text_completion(client: Client, prompt: Any) -> None:
    resp = await client.post(
        "/completions", json={"model": "other", "prompt": prompt, "max_tokens": 4}
    )
    assert resp.status == 200
    body = await resp.json()
    assert body["object"] == "text_completion"
    assert body["system_fingerprint"] == "eng-a"
    assert len(body["choices"][0]["text"].split()) == 4
    assert body["usage"]["completion_tokens"] == 4


async def test_chat_stream_format(client: Client) -> None:
    resp = await client.post(
        CHAT,
        json={
            "model": "sim-model",
            "messages": MESSAGES,
            "max_tokens": 5,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["X-Llmsvc-Engine"] == "eng-a"
    payloads = sse_payloads(await resp.read())
    assert payloads[-1] == "[DONE]"
    chunks = [orjson.loads(p) for p in payloads[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["system_fingerprint"] == "eng-a" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    tokens = [c["choices"][0]["delta"]["content"] for c in chunks[1:6]]
    assert len(tokens) == 5
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:6])
    assert chunks[6]["choices"][0]["finish_reason"] == "length"
    assert chunks[7]["choices"] == []
    assert chunks[7]["usage"]["completion_tokens"] == 5
    assert len(chunks) == 8
    # streamed text equals the non-streamed text of the same request
    plain = await client.post(
        CHAT, json={"model": "sim-model", "messages": MESSAGES, "max_tokens": 5}
    )
    assert "".join(tokens) == (await plain.json())["choices"][0]["message"]["content"]


async def test_completion_stream_without_usage(client: Client) -> None:
    resp = await client.post(
        "/v1/completions",
        json={"model": "sim-model", "prompt": "x", "max_tokens": 3, "stream": True},
    )
    payloads = sse_payloads(await resp.read())
    assert payloads[-1] == "[DONE]"
    chunks = [orjson.loads(p) for p in payloads[:-1]]
    assert [c["object"] for c in chunks] == ["text_completion"] * 4
    assert all(c["choices"][0]["text"] for c in chunks[:3])
    assert chunks[3]["choices"][0]["finish_reason"] == "length"
    assert all("usage" not in c for c in chunks)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", CHAT, b"{not json", 400, "invalid_json"),
        ("POST", CHAT, b"", 400, "invalid_json"),
        ("POST", CHAT, b"[1, 2]", 400, "invalid_json"),
        ("POST", CHAT, orjson.dumps({"messages": MESSAGES}), 400, "invalid_value"),
        ("POST", CHAT, orjson.dumps({"model": 3, "messages": MESSAGES}), 400, "invalid_value"),
        (
            "POST",
            CHAT,
            orjson.dumps({"model": "sim-model", "messages": "hi"}),
            400,
            "invalid_value",
        ),
        ("POST", CHAT, orjson.dumps({"model": "sim-model", "messages": []}), 400, "invalid_value"),
        (
            "POST",
            CHAT,
            orjson.dumps({"model": "sim-model", "messages": MESSAGES, "max_tokens": "many"}),
            400,
            "invalid_value",
        ),
        (
            "POST",
            CHAT,
            orjson.dumps({"model": "sim-model", "messages": MESSAGES, "stream": "maybe"}),
            400,
            "invalid_value",
        ),
        (
            "POST",
            "/v1/completions",
            orjson.dumps({"model": "sim-model", "prompt": ["a", "b"]}),
            400,
            "batch_not_supported",
        ),
        (
            "POST",
            "/v1/embeddings",
            orjson.dumps({"model": "sim-model", "input": []}),
            400,
            "invalid_value",
        ),
        (
            "POST",
            CHAT,
            orjson.dumps({"model": "nope", "messages": MESSAGES}),
            404,
            "model_not_found",
        ),
        ("GET", "/v1/nothing-here", None, 404, "not_found"),
        ("GET", CHAT, None, 405, "method_not_allowed"),
        ("DELETE", "/v1/models", None, 405, "method_not_allowed"),
    ],
)
async def test_errors_have_the_openai_shape(
    client: Client, method: str, path: str, body: bytes | None, status: int, code: str
) -> None:
    resp = await client.request(method, path, data=body)
    assert resp.status == status
    error = (await resp.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert "Traceback" not in error["message"]


async def test_unknown_model_message_like_vllm(client: Client) -> None:
    resp = await client.post("/v1/embeddings", json={"model": "gpt-9", "input": "x"})
    assert resp.status == 404
    assert (await resp.json())["error"]["message"] == "The model 'gpt-9' does not exist."


async def test_prompt_longer_than_kv_cache_is_rejected(make_client: MakeClient) -> None:
    client = await make_client(kv_cache_tokens=100)
    ok = await client.post(
        "/v1/completions", json={"model": "sim-model", "prompt": "x" * 360, "max_tokens": 10}
    )
    assert ok.status == 200
    resp = await client.post(
        "/v1/completions", json={"model": "sim-model", "prompt": "x" * 360, "max_tokens": 11}
    )
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "context_length_exceeded"
    assert "maximum context length is 100 tokens" in error["message"]


async def test_embeddings(client: Client) -> None:
    resp = await client.post(
        "/v1/embeddings", json={"model": "sim-model", "input": ["a", "b", "a"]}
    )
    assert resp.status == 200
    assert resp.headers["X-Llmsvc-Engine"] == "eng-a"
    body = await resp.json()
    vectors = [d["embedding"] for d in body["data"]]
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert len(vectors[0]) == 256
    assert vectors[0] == vectors[2] != vectors[1]
    assert sum(v * v for v in vectors[1]) == pytest.approx(1.0)
    assert body["usage"]["prompt_tokens"] == 3
    small = await client.post(
        "/embeddings",
        json={"model": "sim-model", "input": "a", "dimensions": 8, "encoding_format": "base64"},
    )
    data = (await small.json())["data"][0]["embedding"]
    assert len(struct.unpack("<8f", base64.b64decode(data))) == 8


async def test_health_and_loading_gate(make_client: MakeClient) -> None:
    client = await make_client(startup_delay=0.4)
    resp = await client.get("/health")
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "loading"
    assert (
        await client.post(CHAT, json={"model": "sim-model", "messages": MESSAGES})
    ).status == 503
    assert (await client.get("/metrics")).status == 200
    for _ in range(40):
        await asyncio.sleep(0.05)
        if (await client.get("/health")).status == 200:
            break
    assert (await client.get("/health")).status == 200
    assert (
        await client.post(CHAT, json={"model": "sim-model", "messages": MESSAGES})
    ).status == 200


async def test_fail_rate_one_answers_500(make_client: MakeClient) -> None:
    client = await make_client(fail_rate=1.0)
    resp = await client.post(CHAT, json={"model": "sim-model", "messages": MESSAGES})
    assert resp.status == 500
    assert (await resp.json())["error"]["code"] == "simulated_failure"


async def test_fail_rate_is_seeded(make_client: MakeClient) -> None:
    async def pattern() -> list[int]:
        client = await make_client(fail_rate=0.5, seed=11)
        body = {"model": "sim-model", "messages": MESSAGES, "max_tokens": 1}
        return [(await client.post(CHAT, json=body)).status for _ in range(20)]

    first = await pattern()
    assert 0 < first.count(500) < 20
    assert await pattern() == first


async def test_metrics_use_vllm_names(client: Client) -> None:
    body = {"model": "sim-model", "messages": MESSAGES, "max_tokens": 4}
    for _ in range(2):
        assert (await client.post(CHAT, json=body)).status == 200
    text = await (await client.get("/metrics")).text()
    samples = metric_samples(text)
    labels = (("engine", "0"), ("model_name", "sim-model"))
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "vllm:time_to_first_token_seconds_count",
        "vllm:e2e_request_latency_seconds_count",
        "vllm:request_queue_time_seconds_count",
        "vllm:inter_token_latency_seconds_count",
        "vllm:request_prompt_tokens_count",
        "vllm:request_generation_tokens_count",
    ):
        assert (name, labels) in samples, name
    assert samples[("vllm:generation_tokens_total", labels)] == 8
    assert samples[("vllm:e2e_request_latency_seconds_count", labels)] == 2
    assert samples[("vllm:inter_token_latency_seconds_count", labels)] == 6
    success = (("engine", "0"), ("finished_reason", "length"), ("model_name", "sim-model"))
    assert samples[("vllm:request_success_total", success)] == 2
    other = (("engine", "0"), ("model_name", "other"))
    assert samples[("vllm:num_requests_running", other)] == 0
    assert samples[("vllm:kv_cache_usage_perc", labels)] == 0


async def test_openapi_lists_the_endpoints(client: Client) -> None:
    doc = await (await client.get("/openapi.json")).json()
    assert {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models"} <= set(
        doc["paths"]
    )


@pytest.mark.parametrize("path", [CHAT, "/v1/completions"])
async def test_stream_null_is_not_streaming(client: Client, path: str) -> None:
    """OpenAI accepts ``"stream": null`` and reads it as false."""
    prompt = {"messages": MESSAGES} if path == CHAT else {"prompt": "x"}
    body = {"model": "sim-model", **prompt, "max_tokens": 2, "stream": None}
    resp = await client.post(path, json=body)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("application/json")


async def test_a_huge_unknown_model_is_not_echoed_whole(client: Client) -> None:
    resp = await client.post(CHAT, json={"model": "x" * (1024 * 1024), "messages": MESSAGES})
    assert resp.status == 404
    assert len((await resp.json())["error"]["message"]) < 400
