"""Forwarding of inference requests: backend choice, retries, streaming.

The request body is read once, parsed only for what routing needs
(``core.wire.parse_routing``) and forwarded as read (decoded from its
``Content-Encoding``, see below). A connect error, a timeout before the
upstream's headers (for a stream, a failure or timeout before its first
chunk; the limit is ``latency.FirstByteLimits``'), the backend's ejection as
hung while the request waits for its first byte (``suspicion``, ``ejection``)
or an upstream 5xx is retried on another
eligible backend not yet tried, unless the request has failed the same way on
two backends (``Exchange.poisoned``: a poison request, answered with the last
error and counted against no backend); a failure after that (a plain answer's
body, the rest of a stream) is final. Before any of it, headers over
``--max-header-bytes`` get 431 and the body is decoded from its
``Content-Encoding`` (``core.encoding``), which is not forwarded. Streams are
relayed chunk by chunk as they arrive; once ``data: [DONE]`` has gone to the
client the request is complete (``Attempt.delivered``): a client that closes
then (as guidellm does) is not a 499, and the upstream's end is still read, for
at most ``streams.DRAIN_S``, so that its connection is kept for the next request.
What each try and the request's answer count is reported to their
``attempt.Attempt`` and ``attempt.Exchange``, which keep every store in step.

Exceptions::

    ApiError (core)        final: rendered by the error middleware
    RetryableFailure       this backend failed before any byte reached the
                           client; the caller may try another one
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import time
from collections.abc import Callable

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict

from llmsvc.core.errors import (
    ApiError,
    UpstreamError,
    UpstreamTimeout,
)
from llmsvc.core.jsonio import read_body
from llmsvc.core.wire import RoutingInfo, parse_routing
from llmsvc.router.accesslog import REQUEST_ID_HEADER, request_id
from llmsvc.router.admission import Admitted, FlowControl
from llmsvc.router.attempt import CLIENT_CLOSED, Attempt, Exchange
from llmsvc.router.backends import BackendPool
from llmsvc.router.balancing import Strategy
from llmsvc.router.ejection import Ejector
from llmsvc.router.headers import check_header_size, downstream_headers, upstream_headers
from llmsvc.router.hold import NoHealthyBackend
from llmsvc.router.inband import stream_error, upstream_refusal
from llmsvc.router.latency import FirstByteLimits
from llmsvc.router.metrics import Failure, RouterMetrics
from llmsvc.router.scoring import PromptKey
from llmsvc.router.settings import RouterSettings
from llmsvc.router.stats import RouterStats
from llmsvc.router.streams import IdleTimeout, IdleWatch, Tap, drain, ends_stream
from llmsvc.router.suspicion import Suspicion
from llmsvc.router.tenants import VIA_BATCH_TOKEN
from llmsvc.router.usage import StreamUsage, usage_of_body

STALE_RETRIES = 2
"""Sends again, at once, of a request whose connection the backend closed or reset before
any byte of its answer (a kept-alive connection it had closed meanwhile), before it counts
as a connect failure (then retried on another backend, as before)."""

STALE_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE})
"""How a write to, or a read from, a connection the backend had closed fails."""


def stale_connection(exc: aiohttp.ClientError) -> bool:
    """Whether ``exc`` is what a pooled connection the backend had closed gives: closed
    (``ServerDisconnectedError``) or reset without a byte of answer. A connection refused
    (``ClientConnectorError``) is a new one, never stale."""
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return True
    return (
        isinstance(exc, aiohttp.ClientOSError)
        and not isinstance(exc, aiohttp.ClientConnectorError)
        and exc.errno in STALE_ERRNOS
    )


class RetryableFailure(Exception):
    """A backend failed before any byte reached the client; ``error`` if none is left."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.message)
        self.error = error


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
        suspicion: Suspicion,
        ejector: Ejector,
        drop_auth: bool,
        flow: FlowControl,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._flow = flow
        self._suspicion = suspicion
        self._ejector = ejector
        self._strategy = strategy
        self._session = session
        self._metrics = metrics
        self._stats = stats
        self._drop_auth = drop_auth
        self._clock = clock
        self._attempts = settings.retries + 1
        self._max_header_bytes = settings.max_header_bytes
        self._limits = FirstByteLimits(
            fixed=settings.first_byte_timeout,
            stream_floor=settings.stream_first_byte_floor,
            plain_floor=settings.plain_first_byte_floor,
            cap=settings.proxy_timeout,
        )
        self._idle = settings.stream_idle_timeout
        self._timeout = aiohttp.ClientTimeout(
            total=settings.proxy_timeout, connect=settings.proxy_connect_timeout
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        with Exchange(
            pool=self._pool,
            metrics=self._metrics,
            stats=self._stats,
            ejector=self._ejector,
            clock=self._clock,
            released=self._flow.dispatcher.released,
        ) as exchange:
            admitted = Admitted(request_id(request))
            try:
                check_header_size(request, self._max_header_bytes)
                info = parse_routing(await read_body(request))
                exchange.route(info.model)
                self._flow.admit(request, info, admitted, exchange.label)
                return await self._serve(request, exchange, info, admitted)
            except ApiError as error:
                admitted.error = error
                if admitted.feedback is None or admitted.response is None:
                    raise
                exchange.finish(error.status, ttft=None, failed=True)  # headers are out:
                return await admitted.feedback.fail(error)  # the error goes in band
            finally:
                self._flow.done(request, admitted, exchange)

    async def _serve(
        self, request: web.Request, exchange: Exchange, info: RoutingInfo, admitted: Admitted
    ) -> web.StreamResponse:
        headers = upstream_headers(request, drop_auth=self._drop_auth or VIA_BATCH_TOKEN in request)
        headers[REQUEST_ID_HEADER] = admitted.request_id
        key = self._strategy.key(request, info)  # affinity key, None for most strategies
        error: ApiError | None = None
        for _ in range(self._attempts):
            if exchange.poisoned:
                break  # it failed the same way twice: the request's fault, not a backend's
            backend = self._flow.at_once(admitted, exchange.tried, key)  # no coroutine
            if backend is None:
                backend = await self._flow.backend(request, admitted, exchange, key)
            if backend is None:
                break
            try:
                with exchange.attempt(backend) as attempt, self._flow.sending(admitted):
                    if isinstance(key, PromptKey):  # scored: it tracks the request there
                        attempt.flight = key.sent(backend)
                    held = admitted.response
                    answer = await self._forward(request, attempt, exchange, info, headers, held)
                    self._flow.tell_contention(request, answer)  # a plain answer's, in its slot
                    return answer
            except RetryableFailure as failure:
                error = failure.error
        raise error or NoHealthyBackend(info.model)

    async def _forward(
        self,
        request: web.Request,
        attempt: Attempt,
        exchange: Exchange,
        info: RoutingInfo,
        headers: CIMultiDict[str],
        held: web.StreamResponse | None,
    ) -> web.StreamResponse:
        """``held``: a held stream's response, its headers sent: the answer goes into it."""
        upstream, first = await self._first_byte(request, attempt, info, headers)
        try:
            if info.stream and upstream.status < 300:
                return await self._relay_stream(request, upstream, attempt, exchange, first, held)
            ttfb = exchange.elapsed()
            answer = await self._relay_body(upstream, attempt, exchange, ttfb)
            if held is not None:  # not a stream after all (an error): in band, as the rest
                raise upstream_refusal(answer)
            return answer
        finally:
            if attempt.complete:  # even when the client's close cancelled the relay
                await drain(upstream)
            upstream.close()

    async def _first_byte(
        self,
        request: web.Request,
        attempt: Attempt,
        info: RoutingInfo,
        headers: CIMultiDict[str],
    ) -> tuple[aiohttp.ClientResponse, bytes]:
        """The upstream's answer once its first byte came (for a good stream: its first
        chunk, returned beside it): the client sees nothing before, so until then any
        failure, timeout or ejection is a RetryableFailure."""
        backend = attempt.backend
        window = backend.ttfb_stream if info.stream else backend.ttfb_plain
        limit = self._limits.limit(window, stream=info.stream)
        if attempt.budget is not None:
            limit = min(limit, attempt.budget)
        deadline = asyncio.get_running_loop().time() + limit
        watch = self._suspicion.watch(backend)
        try:
            async with attempt.waiting(deadline):
                upstream = await self._send(request, attempt, info, headers)
                try:
                    first = await self._first_of(upstream, attempt, stream=info.stream)
                except BaseException:
                    upstream.close()
                    raise
            return upstream, first
        except TimeoutError:
            raise self._first_byte_timeout(attempt, limit) from None
        finally:
            if watch is not None:
                watch.cancel()

    async def _first_of(
        self, upstream: aiohttp.ClientResponse, attempt: Attempt, *, stream: bool
    ) -> bytes:
        """The first chunk of a good stream (b"" otherwise); a 5xx is a RetryableFailure."""
        if upstream.status >= 500:
            attempt.heard()
            raise self._failed(
                attempt,
                Failure.STATUS_5XX,
                status=upstream.status,
                error=UpstreamError(
                    f"Backend '{attempt.backend.name}' answered {upstream.status}",
                    code="upstream_status",
                ),
            )
        if upstream.status >= 300:
            attempt.heard()
            return b""
        if not stream:
            attempt.arrived(stream=False)
            return b""
        first = await self._first_chunk(upstream, attempt)
        attempt.arrived(stream=True)
        return first

    async def _send(
        self,
        request: web.Request,
        attempt: Attempt,
        info: RoutingInfo,
        headers: CIMultiDict[str],
    ) -> aiohttp.ClientResponse:
        """The upstream response once its headers arrived; RetryableFailure for a connect
        error (the caller's ``attempt.waiting`` raises TimeoutError at its limit)."""
        backend = attempt.backend
        timeout = self._timeout if attempt.budget is None else self._within(attempt.budget)
        url = backend.url + request.rel_url.raw_path_qs  # the client's path and query, as sent
        try:
            for stale in range(STALE_RETRIES, -1, -1):
                try:
                    return await self._session.request(
                        request.method, url, data=info.body, headers=headers,
                        timeout=timeout, allow_redirects=False,
                    )  # fmt: skip
                except aiohttp.ClientError as exc:
                    # Closed or reset without a byte of answer: most often a kept-alive
                    # connection the backend had just closed (llama-server closes after a
                    # stream; the close can cross the next request, which then meets a
                    # reset); the pool gives another or a new one. Then a failure like any
                    # other.
                    if not stale or not stale_connection(exc):
                        raise
            raise AssertionError("unreachable")  # pragma: no cover
        except (aiohttp.ClientError, OSError) as exc:
            raise self._failed(
                attempt,
                Failure.CONNECT,
                UpstreamError(
                    f"Cannot reach backend '{backend.name}': {type(exc).__name__}",
                    code="upstream_unreachable",
                ),
            ) from None

    def _within(self, budget: float) -> aiohttp.ClientTimeout:
        """What a queue wait left of ``--proxy-timeout``, a little over: the first-byte
        limit (``budget`` too) is what ends a wait for headers, as a timeout."""
        return aiohttp.ClientTimeout(total=budget + 0.5, connect=self._timeout.connect)

    async def _first_chunk(self, upstream: aiohttp.ClientResponse, attempt: Attempt) -> bytes:
        try:
            return await upstream.content.readany()
        except (aiohttp.ClientError, OSError):
            raise self._failed(
                attempt,
                Failure.STREAM,
                UpstreamError(
                    f"Backend '{attempt.backend.name}' failed before its first chunk",
                    code="upstream_stream",
                ),
            ) from None

    def _first_byte_timeout(self, attempt: Attempt, limit: float) -> RetryableFailure:
        name = attempt.backend.name
        if attempt.rescued:
            return self._failed(
                attempt,
                Failure.EJECTED,
                UpstreamError(
                    f"Backend '{name}' was ejected (its health check failed) before it answered",
                    code="upstream_ejected",
                ),
            )
        return self._failed(
            attempt,
            Failure.TIMEOUT,
            UpstreamTimeout(
                f"Backend '{name}' sent nothing within {limit:g}s", code="upstream_timeout"
            ),
        )

    @staticmethod
    def _failed(
        attempt: Attempt, kind: Failure, error: ApiError, *, status: int | None = None
    ) -> RetryableFailure:
        attempt.failed(kind, status=status)
        return RetryableFailure(error)

    async def _relay_body(
        self,
        upstream: aiohttp.ClientResponse,
        attempt: Attempt,
        exchange: Exchange,
        ttfb: float,
    ) -> web.Response:
        backend = attempt.backend
        try:
            payload = await upstream.read()
            attempt.heard()
            exchange.usage = usage_of_body(payload)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            attempt.failed(Failure.BODY)
            cls = UpstreamTimeout if isinstance(exc, TimeoutError) else UpstreamError
            raise cls(
                f"Backend '{backend.name}' failed while sending its answer",
                code="upstream_body",
            ) from None
        attempt.succeeded()
        attempt.first_byte(ttfb)
        response = web.Response(
            status=upstream.status,
            body=payload,
            headers=downstream_headers(upstream, backend.name),
        )
        exchange.finish(upstream.status, ttft=ttfb, failed=False)
        return response

    async def _relay_stream(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        attempt: Attempt,
        exchange: Exchange,
        first: bytes,
        held: web.StreamResponse | None,
    ) -> web.StreamResponse:
        backend = attempt.backend
        ttft = exchange.elapsed()
        attempt.first_byte(ttft)
        response = held or web.StreamResponse(
            status=upstream.status, headers=downstream_headers(upstream, backend.name)
        )
        if held is None:
            self._flow.tell_contention(request, response)
            await response.prepare(request)
        try:
            with attempt.relaying(upstream.close):
                usage = exchange.usage = StreamUsage()
                relayed = _Relayed(attempt, upstream.status, ttft, usage)
                failure = await self._pump(request, upstream, response, first, relayed)
        except ConnectionError:  # writing to the client: it went away (counted if complete)
            exchange.finish(CLIENT_CLOSED, ttft=ttft, failed=False)
            return response
        if attempt.complete:
            failure = None  # the client has the whole stream: what follows [DONE] is moot
        if failure is None:
            attempt.delivered(upstream.status, ttft)  # the upstream's last chunk has gone
        else:
            attempt.failed(failure)
        with contextlib.suppress(ConnectionError):
            if failure is not None:
                await response.write(stream_error(backend.name, failure, self._idle))
            await response.write_eof()
        exchange.finish(upstream.status, ttft=ttft, failed=failure is not None)
        return response

    async def _pump(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        response: web.StreamResponse,
        chunk: bytes,
        relayed: _Relayed,
    ) -> Failure | None:
        """Relay chunks as they arrive, starting with ``chunk``; how the upstream failed, if
        it did. A client that went away raises ``ConnectionError``. After the first (whose
        write sends the headers), a chunk the client's connection takes at once is relayed
        from the upstream's data callback (``streams.Tap``), the others by this loop;
        ``relayed.seen`` is told of each either way."""
        attempt = relayed.attempt
        watch = IdleWatch(upstream.content, self._idle)  # one timer, not one per chunk
        try:
            if chunk:
                await response.write(chunk)
                relayed.seen(chunk)
            chunked = response.headers.get(hdrs.TRANSFER_ENCODING) == "chunked"  # HTTP/1.1
            with Tap(upstream.content, request, relayed.seen, watch, chunked=chunked):
                while chunk:
                    try:
                        chunk = await watch.next_chunk()
                    except IdleTimeout:
                        return Failure.STREAM_IDLE
                    except TimeoutError:
                        return Failure.TIMEOUT
                    except (aiohttp.ClientError, OSError):
                        return Failure.EJECTED if attempt.rescued else Failure.STREAM
                    if chunk:
                        await response.write(chunk)
                        relayed.seen(chunk)
            return Failure.EJECTED if attempt.rescued else None
        finally:
            watch.close()


class _Relayed:
    """What each relayed chunk of a stream tells: the backend is alive (``Attempt.chunk``:
    no suspicion probe while it streams), the usage tail (``StreamUsage.feed``), and the
    chunk that ends with ``[DONE]`` completes the request (``Attempt.delivered``)."""

    __slots__ = ("_status", "_tail", "_ttft", "_usage", "attempt")

    def __init__(self, attempt: Attempt, status: int, ttft: float, usage: StreamUsage) -> None:
        self.attempt = attempt
        self._status = status
        self._ttft = ttft
        self._usage = usage
        self._tail = b""

    def seen(self, chunk: bytes) -> None:
        """``chunk`` has gone to the client."""
        self._usage.feed(chunk)
        attempt = self.attempt
        attempt.chunk()
        if not attempt.complete:
            tail = self._tail = (self._tail + chunk)[-64:]
            if ends_stream(tail):
                attempt.delivered(self._status, self._ttft)
