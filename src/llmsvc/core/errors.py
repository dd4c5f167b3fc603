"""The OpenAI error shape, and the one middleware every error leaves through.

Exception tree::

    ApiError                 status + OpenAI error fields; rendered as is
    ├── BadRequest           400 invalid_request_error
    ├── Unauthorized         401 authentication_error
    ├── NotFound             404 not_found_error
    │   └── ModelNotFound    404 invalid_request_error, code model_not_found (OpenAI's)
    ├── PayloadTooLarge      413 invalid_request_error
    ├── UnsupportedMedia     415 invalid_request_error
    ├── UpstreamError        502 upstream_error
    ├── UpstreamTimeout      504 upstream_error
    └── ServiceUnavailable   503 service_unavailable_error

Anything else raised by a handler becomes a 500 ``server_error`` whose message
says nothing of the internals; the traceback goes to the log only.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

log = logging.getLogger("llmsvc.errors")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "service_unavailable_error",
    504: "upstream_error",
}
_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "body_too_large",
    415: "unsupported_media_type",
    431: "headers_too_large",
}


class ApiError(Exception):
    """An error that reaches the client as ``{"error": {...}}`` with ``status``."""

    status = 500

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.type = type or error_type(self.status)
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)

    def response(self) -> web.Response:
        return error_response(
            self.status,
            self.message,
            type=self.type,
            param=self.param,
            code=self.code,
            headers=self.headers,
        )


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401


class NotFound(ApiError):
    status = 404


class ModelNotFound(NotFound):
    """A model nothing serves or names, in OpenAI's words: a client must not retry it."""

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model `{echoed(model)}` does not exist or you do not have access to it.",
            type="invalid_request_error",
            code="model_not_found",
        )


class PayloadTooLarge(ApiError):
    status = 413


class UnsupportedMedia(ApiError):
    status = 415


class UpstreamError(ApiError):
    status = 502


class UpstreamTimeout(ApiError):
    status = 504


class ServiceUnavailable(ApiError):
    status = 503


ECHO_LIMIT = 256
"""Characters of a client's value (a model id) an error message repeats."""


def echoed(value: str, limit: int = ECHO_LIMIT) -> str:
    """``value`` as an error message may repeat it: whole when short, else its start and "…"."""
    return value if len(value) <= limit else value[:limit] + "…"


def error_type(status: int) -> str:
    if status in _TYPES:
        return _TYPES[status]
    return "server_error" if status >= 500 else "invalid_request_error"


def error_body(
    message: str,
    *,
    type: str,
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(
    status: int,
    message: str,
    *,
    type: str | None = None,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = error_body(message, type=type or error_type(status), param=param, code=code)
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers=headers,
    )


def _from_http_exception(exc: web.HTTPException, request: web.Request) -> web.Response:
    status = exc.status
    if status == 404:
        message = f"Unknown path: {request.method} {request.path}"
    elif status == 405:
        allowed = ", ".join(sorted(getattr(exc, "allowed_methods", ()) or ()))
        message = f"Method {request.method} is not allowed on {request.path}"
        if allowed:
            message += f" (allowed: {allowed})"
    elif status == 413:
        message = f"Request body too large: {exc.text}"
    else:
        message = exc.reason or "HTTP error"
    headers = {}
    if status == 405 and "Allow" in exc.headers:
        headers["Allow"] = exc.headers["Allow"]
    return error_response(status, message, code=_CODES.get(status), headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render every failure in the OpenAI shape; never leak a traceback."""
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _from_http_exception(exc, request)
    except Exception:
        log.exception("unhandled error", extra={"method": request.method, "path": request.path})
        return error_response(500, "Internal server error", code="internal_error")


def protocol_error_response(status: int, exc: BaseException | None) -> web.Response:
    """The answer to a request aiohttp's HTTP parser rejected (an over-long header line,
    too many headers, a malformed request line): the OpenAI shape, naming the problem
    without echoing the request's bytes, and the connection closed after it.

    Those requests never reach an app or its middleware; ``core.serving``'s request
    handler answers them with this instead of aiohttp's plain text.
    """
    if status >= 500:
        resp = error_response(status, "Internal server error", code="internal_error")
    else:
        what = type(exc).__name__ if exc is not None else "malformed request"
        text = f"The request could not be read as HTTP ({what})"
        resp = error_response(status, text, code="bad_http_request")
    resp.force_close()
    return resp
