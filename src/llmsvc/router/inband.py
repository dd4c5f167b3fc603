"""Errors that go in band: the SSE event that ends a stream whose headers are out.

Once a stream's ``200`` and headers have gone to the client (a relayed stream, or
a held one whose headers went out at once, ``hold``), no later failure can be a
status line: it is one ``data:`` event with the OpenAI error object, and the
stream ends without ``[DONE]``, so that a client knows the answer is incomplete.
"""

from __future__ import annotations

import contextlib
from typing import Any

import orjson
from aiohttp import web

from llmsvc.core.errors import ApiError, error_body
from llmsvc.core.wire import sse_event
from llmsvc.router.metrics import Failure


def in_band(error: ApiError) -> bytes:
    """The SSE event that ends a stream whose headers are out with ``error``."""
    body = error_body(error.message, type=error.type, code=error.code, param=error.param)
    return sse_event(body)


def upstream_refusal(answer: web.Response) -> ApiError:
    """A held stream's upstream answered with an error, not a stream: that error, to go in
    band (its own ``error`` object when it has one)."""
    found: Any = None
    with contextlib.suppress(ValueError):
        found = orjson.loads(answer.body if isinstance(answer.body, bytes) else b"")
    error = found.get("error") if isinstance(found, dict) else None
    if isinstance(error, dict) and isinstance(message := error.get("message"), str):
        code = error.get("code")
        return ApiError(message, status=answer.status, code=code if isinstance(code, str) else None)
    return ApiError(
        f"The backend answered {answer.status}", status=answer.status, code="upstream_status"
    )


def stream_error(backend: str, kind: Failure, idle: float | None) -> bytes:
    """The in-band error event that ends a stream the upstream failed (``kind``);
    ``idle``: ``--stream-idle-timeout``."""
    if kind is Failure.STREAM_IDLE:
        message = f"Backend '{backend}' sent nothing for {idle:g}s"
        code = "stream_idle_timeout"
    elif kind is Failure.TIMEOUT:
        message = f"Backend '{backend}' exceeded the proxy timeout"
        code = "upstream_timeout"
    elif kind is Failure.EJECTED:
        message = f"Backend '{backend}' stalled and was ejected (its health check failed)"
        code = "upstream_ejected"
    else:
        message = f"Backend '{backend}' failed in the middle of the stream"
        code = "upstream_stream"
    return sse_event(error_body(message, type="upstream_error", code=code))
