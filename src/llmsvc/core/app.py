"""App-factory helpers shared by every service.

A service builds its ``web.Application`` with :func:`make_app` from a route
table of :class:`Route` (which also yields ``/openapi.json``), owns its
background work through :func:`background` (a ``cleanup_ctx`` that starts a
supervised task before ``yield`` and cancels and awaits it after), and is run
by :func:`llmsvc.core.serving.serve`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from aiohttp.typedefs import Middleware
from aiohttp.web_urldispatcher import AbstractRoute
from pydantic import BaseModel

from llmsvc.core.auth import BearerAuth, bearer_middleware
from llmsvc.core.errors import Handler, error_middleware
from llmsvc.core.jsonio import DEFAULT_READ_TIMEOUT, READ_TIMEOUT, json_response
from llmsvc.core.openapi import build_openapi

log = logging.getLogger("llmsvc.app")

CleanupCtx = Callable[[web.Application], AsyncIterator[None]]

DEFAULT_MAX_BODY = 8 * 1024 * 1024

_PATH_PARAM = re.compile(r"{([^}:]+)(?::[^}]*)?}")


@dataclass(frozen=True)
class Query:
    """A documented query parameter (or, with ``location="header"``, a request header)."""

    name: str
    description: str = ""
    schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "string"})
    location: Literal["query", "header"] = "query"


@dataclass(frozen=True)
class Route:
    """One endpoint: registered on the app and described in ``/openapi.json``."""

    method: str
    path: str
    handler: Handler
    summary: str
    description: str = ""
    request: type[BaseModel] | None = None
    request_required: bool = True
    request_media: str = "application/json"  # or multipart/form-data (an upload)
    response: type[BaseModel] | None = None
    response_media: str | tuple[str, ...] | None = None  # media types of an untyped response
    status: int = 200
    also: Mapping[int, str] = field(default_factory=dict)  # other success statuses, same body
    errors: Mapping[int, str] = field(default_factory=dict)
    query: tuple[Query, ...] = ()
    protected: bool = False
    """Needs the app's bearer credentials (``make_app(auth=...)``) when it has any."""

    def operation_id(self) -> str:
        words = re.sub(r"[^A-Za-z0-9]+", "_", self.path).strip("_") or "root"
        return f"{self.method.lower()}_{words}"

    def path_params(self) -> list[str]:
        return _PATH_PARAM.findall(self.path)

    def openapi_path(self) -> str:
        """The path as OpenAPI writes it: ``{name}``, without aiohttp's ``:regex``."""
        return _PATH_PARAM.sub(r"{\1}", self.path)


def make_app(
    *,
    title: str,
    version: str,
    routes: Iterable[Route],
    client_max_size: int = DEFAULT_MAX_BODY,
    middlewares: Iterable[Middleware] = (),
    handler_args: Mapping[str, Any] | None = None,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
    auth: BearerAuth | None = None,
) -> web.Application:
    """A ``web.Application`` with the error middleware, the routes and ``/openapi.json``.

    ``auth``: the credentials every route marked ``protected`` needs (a 401 without
    them, before its handler runs); None leaves those routes open. With it, every
    request carries the caller's :class:`~llmsvc.core.auth.Access`
    (:func:`~llmsvc.core.auth.access_of`).

    ``read_timeout``: seconds a client may take to send a request's headers (an idle
    keep-alive connection is closed after it too, see
    :func:`llmsvc.core.serving.serve`) and then its body
    (408, :func:`~llmsvc.core.jsonio.read_body`).
    """
    table = list(routes)
    protected: set[AbstractRoute] = set()  # filled below, as the routes are added
    guard: list[Middleware] = []
    if auth is not None:
        guard.append(bearer_middleware(auth, protects=lambda r: r.match_info.route in protected))
    app = web.Application(
        middlewares=[error_middleware, *guard, *middlewares],
        client_max_size=client_max_size,
        # A client that disconnects cancels its handler, so an engine stops
        # generating and the router closes the upstream request at once. Bodies
        # are decoded by ``jsonio.read_body`` alone (``core.encoding``), with a bound.
        handler_args={
            "handler_cancellation": True,
            "auto_decompress": False,
            **(handler_args or {}),
        },
    )
    app[READ_TIMEOUT] = read_timeout
    for route in table:
        added = app.router.add_route(route.method, route.path, route.handler)
        if route.protected:
            protected.add(added)
    document = build_openapi(title, version, table)

    async def openapi(_: web.Request) -> web.Response:
        return json_response(document)

    app.router.add_get("/openapi.json", openapi)
    return app


def supervised(coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
    """A task whose failure is logged, never silent."""
    task = asyncio.create_task(coro, name=name)

    def _report(t: asyncio.Task[Any]) -> None:
        if t.cancelled():
            return
        exc = t.exception()
        if exc is not None:
            log.error("background task %s failed", name, exc_info=exc)

    task.add_done_callback(_report)
    return task


@contextlib.asynccontextmanager
async def owned_task(coro: Coroutine[Any, Any, Any], *, name: str) -> AsyncIterator[None]:
    """A supervised task for the body of the ``async with``; cancelled and awaited after."""
    task = supervised(coro, name=name)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def background(
    name: str, factory: Callable[[web.Application], Coroutine[Any, Any, Any]]
) -> CleanupCtx:
    """A ``cleanup_ctx`` owning one supervised background task."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with owned_task(factory(app), name=name):
            yield

    return ctx


async def every(
    interval: float, fn: Callable[[], Awaitable[Any]], *, name: str, first_delay: float = 0.0
) -> None:
    """Call ``fn`` every ``interval`` seconds forever; log a failure and go on."""
    if first_delay:
        await asyncio.sleep(first_delay)
    while True:
        try:
            await fn()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("periodic task %s failed; retrying in %.1fs", name, interval)
        await asyncio.sleep(interval)
