"""The router's access log: one JSON line per request, and the request id it carries.

Every request the router answers (served, rejected by flow control, or an error)
gets one line on the ``llmsvc.router.access`` logger, INFO, with the fields of
:class:`AccessEntry`: who asked (tenant, priority), how long it waited (queue, hold),
where it went (backend), what came back (status, tokens, the error code). The line is
JSON whatever ``--log-format`` says (``core.logging`` gives this logger a JSON handler),
so a log collector can parse it without a text grammar (:func:`configure_access_log`
gives the logger its own JSON handler on stderr); ``--no-access-log`` turns it off. Its
level is its own: ``--log-level warning`` quiets the router's other logs, not this one.

The request id ties a client's request to this line and to the engine's logs: a client's
``X-Request-Id`` is passed through when it is a sane token (1 to 128 visible ASCII
characters), otherwise the router makes one (32 hex digits: a random per-process
prefix and a counter, unique like a uuid4 without its system call per request), and
either way it is returned on the answer.

Cost: this runs once per request, so the line is written straight to its stream as
``JsonFormatter`` would have written it (same keys), without a ``LogRecord``, the
caller lookup and the handler chain (about 40 us a request), and to stderr's bytes
layer, flushed once per event-loop iteration rather than once per line; a logger
configured otherwise (no :func:`configure_access_log`) still gets the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import sys
import time
from dataclasses import dataclass
from typing import IO, Any

import orjson
from aiohttp import web

from llmsvc.core.logging import JsonFormatter

REQUEST_ID_HEADER = "X-Request-Id"
ACCESS_LOGGER = "llmsvc.router.access"
MAX_REQUEST_ID = 128
REQUEST_ID_KEY = web.RequestKey("llmsvc.request_id", str)
"""Where :func:`request_id` keeps the id on the request, so every caller gets the same one."""

_log = logging.getLogger(ACCESS_LOGGER)
_sink: IO[str] | None = None  # where configure_access_log sends lines; None: the logger's way
_ids: tuple[str, itertools.count[int]] | None = None  # (prefix, counter)


def _forget_ids() -> None:
    """A forked child chooses its own prefix (``os.register_at_fork``): no ``getpid``
    system call per request to notice the fork."""
    global _ids
    _ids = None


os.register_at_fork(after_in_child=_forget_ids)


def new_request_id() -> str:
    """32 hex digits, unique per process (a random 64-bit prefix, chosen again in a
    forked worker, and a counter)."""
    global _ids
    ids = _ids
    if ids is None:
        ids = _ids = (secrets.token_hex(8), itertools.count(1))
    return f"{ids[0]}{next(ids[1]):016x}"


def _acceptable(value: str) -> bool:
    """1..128 visible ASCII characters (``!`` to ``~``): safe in a header and a log line."""
    return 0 < len(value) <= MAX_REQUEST_ID and all("!" <= c <= "~" for c in value)


def request_id(request: web.Request) -> str:
    """The request's id: the client's ``X-Request-Id`` when acceptable, else a new one.

    Computed once per request (kept on the request), so the answer's header, the
    forwarded header and the access-log line agree.
    """
    if REQUEST_ID_KEY in request:
        return request[REQUEST_ID_KEY]
    given = request.headers.get(REQUEST_ID_HEADER)
    rid = given if given is not None and _acceptable(given) else new_request_id()
    request[REQUEST_ID_KEY] = rid
    return rid


@dataclass(slots=True)
class AccessEntry:
    """One request, as its access-log line reports it.

    ``model`` is what the body asked for (None when the body had none); ``backend``
    the one that answered (None when none did); ``reason`` the rejection reason or
    the error code of a non-2xx answer; the tokens are the answer's ``usage`` (None
    when it had none: an error, or a stream without ``stream_options.include_usage``).
    """

    request_id: str
    method: str
    path: str
    model: str | None
    tenant: str
    priority: str
    status: int
    backend: str | None
    queue_wait_s: float
    hold_s: float
    duration_s: float
    prompt_tokens: int | None
    completion_tokens: int | None
    stream: bool
    reason: str | None

    def fields(self) -> dict[str, Any]:
        """The entry as the line's JSON keys; times rounded to the millisecond.

        Spelled out rather than ``dataclasses.asdict`` (which deep-copies): this runs
        once per request, on the request path.
        """
        return {
            "request_id": self.request_id,
            "method": self.method,
            "path": self.path,
            "model": self.model,
            "tenant": self.tenant,
            "priority": self.priority,
            "status": self.status,
            "backend": self.backend,
            "queue_wait_s": round(self.queue_wait_s, 3),
            "hold_s": round(self.hold_s, 3),
            "duration_s": round(self.duration_s, 3),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "stream": self.stream,
            "reason": self.reason,
        }


def configure_access_log(enabled: bool, stream: IO[str] | None = None) -> None:
    """Send access lines as JSON to ``stream`` (stderr), not through the root's format.

    Safe to call twice (the handler is replaced). Disabled: the logger takes nothing,
    and :func:`access_log_enabled` tells the request path to skip building entries.
    """
    global _sink
    out = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    _log.handlers[:] = [handler]
    _log.propagate = False  # one line, in JSON, whatever the root handler's format
    _log.setLevel(logging.INFO if enabled else logging.CRITICAL + 1)
    _sink = out if enabled else None


def access_log_enabled() -> bool:
    """Whether a line would be written (``--no-access-log`` or a higher level: no)."""
    return _sink is not None or _log.isEnabledFor(logging.INFO)


_flushing: set[int] = set()  # ids of the streams a flush is scheduled for


def _flush_soon(raw: IO[bytes]) -> None:
    """Flush ``raw`` once the event loop has run what is ready now: the lines of one loop
    iteration go out in one ``write(2)``, not one each (a line is whole when written; text
    written to the same stderr meanwhile flushes its bytes layer first, so lines keep
    their order). Outside a loop: at once."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        raw.flush()
        return
    key = id(raw)
    if key in _flushing:
        return
    _flushing.add(key)

    def flush() -> None:
        _flushing.discard(key)
        with contextlib.suppress(OSError, ValueError):  # a closed or broken stderr
            raw.flush()

    loop.call_soon(flush)


def log_access(entry: AccessEntry) -> None:
    """Write the entry's line: message ``access``, the entry's fields as JSON keys."""
    sink = _sink
    if sink is not None:
        event = {
            "ts": round(time.time(), 3),
            "level": "info",
            "logger": ACCESS_LOGGER,
            "msg": "access",
            **entry.fields(),
        }
        line = orjson.dumps(event, default=str) + b"\n"
        raw = getattr(sink, "buffer", None)  # stderr's bytes layer: no line-buffered flush
        if raw is None:
            sink.write(line.decode())
            sink.flush()
        else:
            raw.write(line)
            _flush_soon(raw)
    elif _log.isEnabledFor(logging.INFO):
        _log.info("access", extra=entry.fields())
