"""Forwarding of inference requests: backend choice, retries, streaming.

The request body is read once, parsed only for what routing needs
(``core.wire.parse_routing``) and forwarded as the original bytes. A connect
error, a timeout before the upstream's headers or an upstream 5xx is retried
on another eligible backend not yet tried; anything after the first byte went
to the client is final. Streams are relayed chunk by chunk as they arrive.

Exceptions::

    ApiError (core)        final: rendered by the error middleware
    RetryableFailure       this backend failed before any byte reached the
                           client; the caller may try another one
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from llmsvc.core.errors import (
    ApiError,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
    error_body,
)
from llmsvc.core.jsonio import read_body
from llmsvc.core.wire import RoutingInfo, parse_routing, sse_event
from llmsvc.router.backends import Backend, BackendPool
from llmsvc.router.balancing import Strategy
from llmsvc.router.headers import downstream_headers, upstream_headers
from llmsvc.router.metrics import NO_BACKEND, UNKNOWN_MODEL, RouterMetrics
from llmsvc.router.settings import RouterSettings
from llmsvc.router.stats import RouterStats

log = logging.getLogger("llmsvc.router.proxy")

CLIENT_CLOSED = 499  # nginx's status for a client that went away first
_NO_GUARD = contextlib.nullcontext()


class RetryableFailure(Exception):
    """A backend failed before any byte reached the client; ``error`` if none is left."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.message)
        self.error = error


class _IdleTimeout(Exception):
    """The upstream stream sent nothing for ``--stream-idle-timeout`` seconds."""


class Proxy:
    """The handler of every inference path."""

    def __init__(
        self,
        *,
        settings: RouterSettings,
        pool: BackendPool,
        strategy: Strategy,
        session: aiohttp.ClientSession,
        metrics: RouterMetrics,
        stats: RouterStats,
        drop_auth: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._strategy = strategy
        self._session = session
        self._metrics = metrics
        self._stats = stats
        self._drop_auth = drop_auth
        self._clock = clock
        self._attempts = settings.retries + 1
        self._first_byte = settings.first_byte_limit()
        self._guard_first_byte = settings.first_byte_timeout is not None
        self._idle = settings.stream_idle_timeout
        self._timeout = aiohttp.ClientTimeout(
            total=settings.proxy_timeout, connect=settings.proxy_connect_timeout
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = self._clock()
        label = UNKNOWN_MODEL
        tried: list[Backend] = []
        error: ApiError | None = None
        try:
            info = parse_routing(await read_body(request))
            if self._pool.knows(info.model):
                label = info.model
            headers = upstream_headers(request, drop_auth=self._drop_auth)
            key = self._strategy.key(request, info)  # affinity key, None for most strategies
            for _ in range(self._attempts):
                backend = self._pick(info.model, tried, key)
                if backend is None:
                    break
                if tried:
                    self._metrics.retries.labels(label).inc()
                tried.append(backend)
                try:
                    return await self._attempt(request, backend, info, headers, label, started)
                except RetryableFailure as failure:
                    error = failure.error
            if error is None:
                error = ServiceUnavailable(
                    f"No healthy services available for model '{info.model}'",
                    code="no_healthy_backend",
                )
            raise error
        except ApiError as exc:
            self._account(label, tried, exc.status, started, ttft=None, failed=True)
            raise
        except asyncio.CancelledError:
            self._account(label, tried, CLIENT_CLOSED, started, ttft=None, failed=False)
            raise

    def _pick(self, model: str, tried: list[Backend], key: str | None = None) -> Backend | None:
        candidates = self._pool.eligible(model, self._clock())
        if tried:
            candidates = [b for b in candidates if b not in tried]
        if not candidates:
            return None
        return self._strategy.pick(model, candidates, key)

    def _account(
        self,
        label: str,
        tried: list[Backend],
        status: int,
        started: float,
        *,
        ttft: float | None,
        failed: bool,
    ) -> None:
        duration = self._clock() - started
        backend = tried[-1].name if tried else NO_BACKEND
        self._metrics.count_request(label, backend, status, duration)
        if label != UNKNOWN_MODEL:
            self._stats.record(label, error=failed, duration=duration, ttft=ttft)

    async def _attempt(
        self,
        request: web.Request,
        backend: Backend,
        info: RoutingInfo,
        headers: CIMultiDict[str],
        label: str,
        started: float,
    ) -> web.StreamResponse:
        backend.in_flight += 1
        backend.stats.requests += 1
        sent = self._clock()
        deadline = asyncio.get_running_loop().time() + self._first_byte
        try:
            upstream = await self._send(request, backend, info, headers, deadline)
            try:
                if upstream.status >= 500:
                    raise self._failed(
                        backend,
                        "status_5xx",
                        UpstreamError(
                            f"Backend '{backend.name}' answered {upstream.status}",
                            code="upstream_status",
                        ),
                    )
                if info.stream and upstream.status < 300:
                    # The client sees nothing before the first chunk: until then a
                    # failure is still retried elsewhere.
                    first = await self._first_chunk(upstream, backend, deadline)
                    return await self._relay_stream(
                        request, upstream, backend, label, started, first
                    )
                ttfb = self._clock() - started
                return await self._relay_body(upstream, backend, label, started, ttfb)
            finally:
                upstream.close()
        finally:
            backend.in_flight -= 1
            backend.stats.response_time_sum += self._clock() - sent

    async def _send(
        self,
        request: web.Request,
        backend: Backend,
        info: RoutingInfo,
        headers: CIMultiDict[str],
        deadline: float,
    ) -> aiohttp.ClientResponse:
        """The upstream response once its headers arrived; RetryableFailure otherwise."""
        # Without --first-byte-timeout the limit is --proxy-timeout, which the
        # session's own timeout enforces: no second timer per request.
        guard = asyncio.timeout_at(deadline) if self._guard_first_byte else _NO_GUARD
        try:
            async with guard:
                return await self._session.request(
                    request.method,
                    backend.url + request.raw_path,
                    data=info.body,
                    headers=headers,
                    timeout=self._timeout,
                    allow_redirects=False,
                )
        except TimeoutError:
            raise self._first_byte_timeout(backend) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise self._failed(
                backend,
                "connect",
                UpstreamError(
                    f"Cannot reach backend '{backend.name}': {type(exc).__name__}",
                    code="upstream_unreachable",
                ),
            ) from None

    async def _first_chunk(
        self, upstream: aiohttp.ClientResponse, backend: Backend, deadline: float
    ) -> bytes:
        try:
            async with asyncio.timeout_at(deadline):
                return await upstream.content.readany()
        except TimeoutError:
            raise self._first_byte_timeout(backend) from None
        except (aiohttp.ClientError, OSError):
            raise self._failed(
                backend,
                "stream",
                UpstreamError(
                    f"Backend '{backend.name}' failed before its first chunk",
                    code="upstream_stream",
                ),
            ) from None

    def _first_byte_timeout(self, backend: Backend) -> RetryableFailure:
        return self._failed(
            backend,
            "timeout",
            UpstreamTimeout(
                f"Backend '{backend.name}' sent nothing within {self._first_byte:g}s",
                code="upstream_timeout",
            ),
        )

    def _failed(self, backend: Backend, kind: str, error: ApiError) -> RetryableFailure:
        self._note_failure(backend, kind)
        return RetryableFailure(error)

    def _note_failure(self, backend: Backend, kind: str) -> None:
        backend.stats.errors += 1
        self._metrics.upstream_errors.labels(backend.name, kind).inc()
        if backend.passive.record_failure(self._clock()):
            self._pool.health_changed()
            log.warning(
                "backend %s taken out for %gs after repeated failures",
                backend.name,
                backend.passive.fail_timeout,
                extra={"backend": backend.name, "kind": kind},
            )

    async def _relay_body(
        self,
        upstream: aiohttp.ClientResponse,
        backend: Backend,
        label: str,
        started: float,
        ttfb: float,
    ) -> web.Response:
        try:
            payload = await upstream.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self._note_failure(backend, "body")
            cls = UpstreamTimeout if isinstance(exc, TimeoutError) else UpstreamError
            raise cls(
                f"Backend '{backend.name}' failed while sending its answer",
                code="upstream_body",
            ) from None
        backend.passive.record_success(self._clock())
        backend.stats.ttft_sum += ttfb
        backend.stats.ttft_count += 1
        self._metrics.observe_ttfb(label, ttfb)
        response = web.Response(
            status=upstream.status,
            body=payload,
            headers=downstream_headers(upstream, backend.name),
        )
        self._account(label, [backend], upstream.status, started, ttft=ttfb, failed=False)
        return response

    async def _relay_stream(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        backend: Backend,
        label: str,
        started: float,
        first: bytes,
    ) -> web.StreamResponse:
        ttft = self._clock() - started
        backend.stats.ttft_sum += ttft
        backend.stats.ttft_count += 1
        self._metrics.observe_ttfb(label, ttft)
        response = web.StreamResponse(
            status=upstream.status, headers=downstream_headers(upstream, backend.name)
        )
        await response.prepare(request)
        outcome = await self._pump(upstream, response, first)
        if outcome == "client_gone":
            self._account(label, [backend], CLIENT_CLOSED, started, ttft=ttft, failed=False)
            return response
        failed = outcome != "ok"
        if failed:
            self._note_failure(backend, outcome)
        else:
            backend.passive.record_success(self._clock())
        with contextlib.suppress(ConnectionError):
            if failed:
                await response.write(self._stream_error(backend, outcome))
            await response.write_eof()
        self._account(label, [backend], upstream.status, started, ttft=ttft, failed=failed)
        return response

    async def _pump(
        self, upstream: aiohttp.ClientResponse, response: web.StreamResponse, chunk: bytes
    ) -> str:
        """Relay chunks as they arrive, starting with ``chunk``; the outcome:
        ``ok``, ``client_gone`` or the kind of the upstream's failure."""
        content = upstream.content
        while chunk:
            try:
                await response.write(chunk)
            except ConnectionError:
                return "client_gone"
            try:
                chunk = await self._next_chunk(content)
            except _IdleTimeout:
                return "stream_idle"
            except TimeoutError:
                return "timeout"
            except (aiohttp.ClientError, OSError):
                return "stream"
        return "ok"

    async def _next_chunk(self, content: aiohttp.StreamReader) -> bytes:
        if self._idle is None:
            return await content.readany()
        idle = asyncio.timeout(self._idle)
        try:
            async with idle:
                return await content.readany()
        except TimeoutError:
            if idle.expired():
                raise _IdleTimeout from None
            raise

    def _stream_error(self, backend: Backend, kind: str) -> bytes:
        if kind == "stream_idle":
            message = f"Backend '{backend.name}' sent nothing for {self._idle:g}s"
            code = "stream_idle_timeout"
        elif kind == "timeout":
            message = f"Backend '{backend.name}' exceeded the proxy timeout"
            code = "upstream_timeout"
        else:
            message = f"Backend '{backend.name}' failed in the middle of the stream"
            code = "upstream_stream"
        return sse_event(error_body(message, type="upstream_error", code=code))
