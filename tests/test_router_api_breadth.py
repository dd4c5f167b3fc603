"""The OpenAI API as engines serve it, through the real router to real simulated engines:
``GET /v1/models/{id}`` and every model-addressed endpoint (``core.wire.INFERENCE_PATHS``)
routed by its model, with retries, streaming, stats, API keys and tenant model lists."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from llmsvc.core.wire import parse_routing, prompt_prefix
from llmsvc.router.app import create_app
from llmsvc.router.settings import RouterSettings
from procs import HOST, ProcGroup, free_port, start_sim_engine

KEY = "sk-team"  # may use model m only
OTHER_KEY = "sk-other"  # may use every model
Client = TestClient[web.Request, web.Application]

# Each new path with a body that names model m, and what its answer must hold.
BODIES: dict[str, dict[str, Any]] = {
    "/v1/responses": {"model": "m", "input": "hello", "max_output_tokens": 3},
    "/v1/rerank": {"model": "m", "query": "q", "documents": ["a", "b", "c"], "top_n": 2},
    "/rerank": {"model": "m", "query": "q", "documents": ["a", "b"]},
    "/v2/rerank": {"model": "m", "query": "q", "documents": ["a", "b"]},
    "/v1/score": {"model": "m", "text_1": "a", "text_2": ["b", "c"]},
    "/score": {"model": "m", "text_1": "a", "text_2": "b"},
    "/tokenize": {"model": "m", "prompt": "sixteen chars!!!"},
    "/detokenize": {"model": "m", "tokens": [0, 1]},
}


@dataclass
class Stack:
    base: str
    engines: dict[str, int]  # name -> port

    def post(self, path: str, key: str | None = KEY, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.post(self.base + path, headers=headers, timeout=10, **kw)

    def stats(self) -> dict[str, dict[str, Any]]:
        body = httpx.get(self.base + "/stats", timeout=5).json()
        return {s["name"]: s for s in body["services"]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Engines ``good`` (models m, n) and ``bad`` (m, n; every answer a 500, so every
    request to it is retried on ``good``), and a router with two tenants' keys."""
    tmp = tmp_path_factory.mktemp("breadth")
    group = ProcGroup(tmp)
    try:
        engines = {
            name: start_sim_engine(group, name, "--model-name", "m,n", *extra)[1]
            for name, extra in (("good", ()), ("bad", ("--fail-rate", "1")))
        }
        records = [
            {"name": n, "host": HOST, "port": p, "metadata": {"models": ["m", "n"]}}
            for n, p in engines.items()
        ]
        static = tmp / "services.json"
        static.write_bytes(orjson.dumps({"services": records}))
        keys = tmp / "keys.yaml"
        keys.write_text(
            f"- {{name: team, key: {KEY}, models: [m]}}\n- {{name: other, key: {OTHER_KEY}}}\n"
        )
        port = free_port()
        router = group(
            "router", "router", "--port", str(port), "--static-services", str(static),
            "--api-keys-file", str(keys), "--health-interval", "0.5", "--max-fails", "0",
            "--outlier-consecutive-failures", "0",
        )  # fmt: skip
        base = f"http://{HOST}:{port}"
        router.wait_http(f"{base}/health")
        yield Stack(base=base, engines=engines)
    except BaseException:
        group.dump_logs()
        raise
    finally:
        group.stop_all()


def test_models_retrieve_with_the_openai_client(stack: Stack) -> None:
    client = openai.OpenAI(base_url=f"{stack.base}/v1", api_key=KEY, max_retries=0)
    model = client.models.retrieve("m")
    assert (model.id, model.object) == ("m", "model")
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("never-served")
    assert caught.value.code == "model_not_found"
    bare = httpx.get(f"{stack.base}/models/n", headers={"Authorization": f"Bearer {KEY}"})
    assert bare.status_code == 200 and bare.json()["id"] == "n"
    assert httpx.get(f"{stack.base}/v1/models/m").status_code == 401


@pytest.mark.parametrize("path", sorted(BODIES))
def test_each_model_addressed_path_is_routed_and_retried(stack: Stack, path: str) -> None:
    before = stack.stats()
    for _ in range(2):  # round robin: one of the two goes to "bad" first, and is retried
        answer = stack.post(path, json=BODIES[path])
        assert answer.status_code == 200, answer.text
        assert answer.headers["X-Llmsvc-Backend"] == "good"
    body = answer.json()
    if path == "/v1/responses":
        assert body["object"] == "response" and body["output"][0]["content"][0]["text"]
    elif path.endswith("rerank"):
        assert len(body["results"]) == 2
    elif path.endswith("score"):
        assert all(0 <= d["score"] <= 1 for d in body["data"])
    elif path == "/tokenize":
        assert body["count"] == len(body["tokens"]) > 0
    else:
        assert body["prompt"]
    after = stack.stats()
    assert after["good"]["requests"] == before["good"]["requests"] + 2
    assert after["bad"]["errors"] > before["bad"]["errors"]


def test_responses_stream_and_transcriptions_with_the_openai_client(stack: Stack) -> None:
    client = openai.OpenAI(base_url=f"{stack.base}/v1", api_key=KEY, max_retries=0)
    response = client.responses.create(model="m", input="hi", max_output_tokens=4)
    assert response.output_text and response.model == "m"
    events = list(client.responses.create(model="m", input="hi", max_output_tokens=4, stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") == 4
    audio = b"RIFF" + bytes(64 * 1024)
    text = client.audio.transcriptions.create(model="m", file=("a.wav", audio, "audio/wav"))
    assert text.text
    with pytest.raises(openai.NotFoundError):
        client.audio.transcriptions.create(model="nope", file=("a.wav", audio, "audio/wav"))


def test_keys_guard_every_routed_path_including_tokenize(stack: Stack) -> None:
    for path, body in BODIES.items():
        assert stack.post(path, key=None, json=body).status_code == 401, path
        assert stack.post(path, key="wrong", json=body).status_code == 401, path
    form = {"model": "m"}
    files = {"file": ("a.wav", b"RIFF0000", "audio/wav")}
    assert (
        stack.post("/v1/audio/transcriptions", key=None, data=form, files=files).status_code == 401
    )


def test_tenant_model_lists_hold_on_the_new_paths(stack: Stack) -> None:
    for path in ("/tokenize", "/v1/rerank", "/v1/responses"):
        body = {**BODIES[path], "model": "n"}
        refused = stack.post(path, json=body)
        assert refused.status_code == 403, path
        assert refused.json()["error"]["code"] == "model_not_allowed"
        assert stack.post(path, key=OTHER_KEY, json=body).status_code == 200, path
    files = {"file": ("a.wav", b"RIFF0000", "audio/wav")}
    refused = stack.post("/v1/audio/transcriptions", data={"model": "n"}, files=files)
    assert refused.status_code == 403


def test_unknown_models_and_paths(stack: Stack) -> None:
    unknown = stack.post("/v1/rerank", json={**BODIES["/v1/rerank"], "model": "nope"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    missing = stack.post("/tokenize", json={"prompt": "x"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "model"
    for path in ("/v1/unknown", "/v3/rerank", "/responses", "/v1/audio/speech", "/tokenizer"):
        assert stack.post(path, key=OTHER_KEY, json={"model": "m"}).status_code == 404, path


def test_form_fields_are_read_in_place() -> None:
    audio = b"\r\n--not-the-boundary\r\n" + bytes(1000)
    body = (
        b'--b0\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        + audio
        + b'\r\n--b0\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1'
        + b'\r\n--b0\r\nContent-Disposition: form-data; name="stream"\r\n\r\nTrue\r\n--b0--\r\n'
    )
    info = parse_routing(body)
    assert (info.model, info.stream, info.body) == ("whisper-1", True, body)
    with pytest.raises(Exception, match="Malformed multipart"):
        parse_routing(b"--b0\r\nno end")


def test_the_prompt_prefix_of_a_responses_request_is_its_messages() -> None:
    """What prefix_affinity and scored hash: the Responses API's input messages as chat's."""
    chat = {"messages": [{"role": "user", "content": "Hi there"}]}
    responses = {"input": [{"role": "user", "content": "Hi there"}]}
    assert prompt_prefix(responses, 100) == prompt_prefix(chat, 100) == "user:Hi there\n"
    assert prompt_prefix({"input": "plain text"}, 5) == "plain"


async def test_an_upload_goes_to_the_engine_byte_for_byte(
    aiohttp_client: Callable[..., Awaitable[Client]], tmp_path: Path
) -> None:
    """A multipart upload reaches the engine as the client sent it: body and Content-Type
    (its boundary) untouched, the path as used."""
    seen: list[tuple[str, str, bytes]] = []

    async def engine(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers["Content-Type"], await request.read()))
        return web.json_response({"text": "ok"})

    async def health(_: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_post("/v1/audio/transcriptions", engine)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, HOST, port).start()
    try:
        record = {"name": "e", "host": HOST, "port": port, "metadata": {"models": ["whisper"]}}
        services = tmp_path / "services.json"
        services.write_bytes(orjson.dumps([record]))
        settings = RouterSettings(static_services=str(services), health_interval=60)
        client = await aiohttp_client(create_app(settings, registry=CollectorRegistry()))
        audio = bytes(range(256)) * 400  # holds CRLFs, dashes and NULs
        sent = (
            b'--xq7\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            b"Content-Type: audio/wav\r\n\r\n" + audio + b"\r\n--xq7\r\n"
            b'Content-Disposition: form-data; name="model"\r\n\r\nwhisper\r\n--xq7--\r\n'
        )
        content_type = "multipart/form-data; boundary=xq7"
        answer = await client.post(
            "/v1/audio/transcriptions", data=sent, headers={"Content-Type": content_type}
        )
        assert answer.status == 200, await answer.text()
        assert answer.headers["X-Llmsvc-Backend"] == "e"
        assert seen == [("/v1/audio/transcriptions", content_type, sent)]
    finally:
        await runner.cleanup()
