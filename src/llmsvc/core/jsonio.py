"""JSON in and out of aiohttp handlers: fast (orjson) and with clear 400s."""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from llmsvc.core.encoding import coding_of, decode_body
from llmsvc.core.errors import ApiError, BadRequest, PayloadTooLarge

M = TypeVar("M", bound=BaseModel)

JSON_CONTENT = "application/json"

DEFAULT_READ_TIMEOUT = 75.0
"""Seconds a client may take to send a request's headers, and then its body (slowloris)."""
READ_TIMEOUT = web.AppKey("llmsvc_read_timeout", float)


def dumps(data: Any) -> bytes:
    return orjson.dumps(data)


def json_response(
    data: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(data), content_type=JSON_CONTENT, headers=headers
    )


def model_response(
    model: BaseModel, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=model.model_dump_json().encode(),
        content_type=JSON_CONTENT,
        headers=headers,
    )


async def read_body(request: web.Request) -> bytes:
    """The whole body, decoded from its ``Content-Encoding`` (``core.encoding``: 415 for
    one it cannot decode, before the body is read; 400 for a body that does not decode);
    413 in the OpenAI shape when over the app's size limit, sent or decoded (at once
    when Content-Length says so), 408 when it takes longer than the app's read timeout."""
    coding = coding_of(request.headers.getall("Content-Encoding", ()))
    return decode_body(await _read_raw(request), coding, limit=request.client_max_size)


async def _read_raw(request: web.Request) -> bytes:
    """The body's bytes as sent (aiohttp's decompression is off, see ``make_app``)."""
    limit = request.client_max_size
    length = request.content_length
    if limit and length is not None and length > limit:
        raise PayloadTooLarge(
            f"Request body too large: Content-Length {length} exceeds the limit of {limit} bytes",
            code="body_too_large",
        )
    timeout = request.config_dict.get(READ_TIMEOUT, DEFAULT_READ_TIMEOUT)
    try:
        if request.content.is_eof():  # the usual case: all of it arrived, no timer needed
            return await request.read()
        async with asyncio.timeout(timeout):
            return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge(
            f"Request body too large: {exc.text}", code="body_too_large"
        ) from None
    except TimeoutError:
        raise ApiError(
            f"Request body not received within {timeout:g} s",
            status=408,
            code="request_timeout",
            headers={"Connection": "close"},
        ) from None


def loads_object(body: bytes) -> dict[str, Any]:
    """Parse a JSON object or raise a 400 that says what is wrong."""
    if not body:
        raise BadRequest("Request body is empty; expected a JSON object", code="invalid_json")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"Malformed JSON in request body: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadRequest(
            f"Request body must be a JSON object, not {type(data).__name__}",
            code="invalid_json",
        )
    return data


def validation_message(exc: ValidationError) -> tuple[str, str | None]:
    """The first validation error as (message, param)."""
    err = exc.errors(include_url=False)[0]
    param = ".".join(str(p) for p in err["loc"]) or None
    msg = str(err["msg"]).removeprefix("Value error, ")  # our validators' own words
    return (f"Invalid '{param}': {msg}" if param else msg), param


def validate_model(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, param = validation_message(exc)
        raise BadRequest(message, param=param, code="invalid_value") from None


async def read_model(request: web.Request, model: type[M]) -> M:
    """Read, parse and validate the body as ``model``; every failure is a clear 400/413."""
    return validate_model(model, loads_object(await read_body(request)))
