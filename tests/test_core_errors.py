"""The one error middleware: every failure leaves in the OpenAI shape, no traceback."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pydantic import BaseModel, Field

from llmsvc.core.app import Route, make_app
from llmsvc.core.errors import BadRequest
from llmsvc.core.jsonio import json_response, read_model


class Thing(BaseModel):
    name: str = Field(min_length=1)
    count: int = 1


async def create(request: web.Request) -> web.Response:
    thing = await read_model(request, Thing)
    return json_response(thing.model_dump(), status=201)


async def boom(_: web.Request) -> web.Response:
    raise RuntimeError("secret internals /etc/passwd")


async def refuse(_: web.Request) -> web.Response:
    raise BadRequest("nope", param="x", code="bad_x")


def app() -> web.Application:
    return make_app(
        title="t",
        version="1",
        client_max_size=1024,
        routes=[
            Route("POST", "/things", create, "Create", request=Thing, response=Thing, status=201),
            Route("GET", "/boom", boom, "Boom"),
            Route("GET", "/refuse", refuse, "Refuse", errors={400: "bad"}),
        ],
    )


@pytest.fixture
async def client(aiohttp_client: Any) -> TestClient[web.Request, web.Application]:
    client: TestClient[web.Request, web.Application] = await aiohttp_client(app())
    return client


def assert_shape(body: dict[str, Any]) -> dict[str, Any]:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    error: dict[str, Any] = body["error"]
    return error


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "type_"),
    [
        ("POST", "/things", {"data": b"{not json"}, 400, "invalid_request_error"),
        ("POST", "/things", {"data": b"[1, 2]"}, 400, "invalid_request_error"),
        ("POST", "/things", {"data": b""}, 400, "invalid_request_error"),
        ("POST", "/things", {"json": {"name": ""}}, 400, "invalid_request_error"),
        ("POST", "/things", {"json": {"name": "a", "count": "many"}}, 400, "invalid_request_error"),
        (
            "POST",
            "/things",
            {"data": b'{"name": "' + b"a" * 2000 + b'"}'},
            413,
            "invalid_request_error",
        ),
        ("GET", "/nowhere", {}, 404, "not_found_error"),
        ("DELETE", "/things", {}, 405, "invalid_request_error"),
        ("GET", "/boom", {}, 500, "server_error"),
        ("GET", "/refuse", {}, 400, "invalid_request_error"),
    ],
)
async def test_errors_have_the_openai_shape(
    client: TestClient[web.Request, web.Application],
    method: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
    type_: str,
) -> None:
    resp = await client.request(method, path, **kwargs)
    assert resp.status == status
    assert resp.content_type == "application/json"
    error = assert_shape(await resp.json())
    assert error["type"] == type_
    assert "Traceback" not in error["message"] and "secret" not in error["message"]
    # The server keeps serving after every bad request.
    ok = await client.post("/things", json={"name": "a"})
    assert ok.status == 201


async def test_validation_error_names_the_field(
    client: TestClient[web.Request, web.Application],
) -> None:
    resp = await client.post("/things", json={"name": "a", "count": "many"})
    error = assert_shape(await resp.json())
    assert error["param"] == "count"
    assert "count" in error["message"]


async def test_api_error_fields_pass_through(
    client: TestClient[web.Request, web.Application],
) -> None:
    error = assert_shape(await (await client.get("/refuse")).json())
    assert error == {
        "message": "nope",
        "type": "invalid_request_error",
        "param": "x",
        "code": "bad_x",
    }


async def test_openapi_document_describes_the_routes(
    client: TestClient[web.Request, web.Application],
) -> None:
    doc = await (await client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    op = doc["paths"]["/things"]["post"]
    assert op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/Thing")
    assert "201" in op["responses"]
    assert "Thing" in doc["components"]["schemas"]
    assert "ErrorResponse" in doc["components"]["schemas"]
    assert "400" in doc["paths"]["/refuse"]["get"]["responses"]
