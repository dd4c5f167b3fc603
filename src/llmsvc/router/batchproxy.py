"""``/v1/files*`` and ``/v1/batches*``: forwarded to the batch service, with the caller's tenant.

Clients know one address, the router's; the batch service (``llmsvc batch``,
``--batch-url``) keeps the files and runs the batches. The router authenticates the
caller as for every ``/v1/*`` path (an API key, or the router's admin token) and
tells the batch service who it is, so that a tenant sees only its own files and
batches there:

- ``Authorization: Bearer <--batch-token>`` replaces the client's (the batch
  service trusts ``X-Llmsvc-Tenant`` only from a holder of that token);
- ``X-Llmsvc-Tenant: <tenant name>`` (``anonymous`` on a router without keys); a
  caller with the admin token gets none: the batch service treats it as its admin;
- a client's own ``X-Llmsvc-Tenant`` and ``X-Llmsvc-Admin`` are dropped, so that no
  tenant can pose as another.

Bodies are streamed both ways, never read whole: an upload may be far larger than
``--max-body-bytes`` (which bounds inference bodies, read by ``jsonio.read_body``;
aiohttp applies ``client_max_size`` only to ``request.read()`` and its callers, not
to ``request.content``). The batch service enforces its own ``--max-file-bytes``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from llmsvc.core.auth import Access, access_of
from llmsvc.core.errors import ApiError, UpstreamError
from llmsvc.router.accesslog import (
    REQUEST_ID_HEADER,
    AccessEntry,
    access_log_enabled,
    log_access,
    request_id,
)
from llmsvc.router.headers import HOP_BY_HOP, connection_tokens
from llmsvc.router.settings import RouterSettings
from llmsvc.router.tenants import tenant_of

TENANT_HEADER = "X-Llmsvc-Tenant"
ADMIN_HEADER = "X-Llmsvc-Admin"
BATCH_PATHS = ("/v1/files", "/v1/files/{tail:.*}", "/v1/batches", "/v1/batches/{tail:.*}")
CHUNK_BYTES = 256 * 1024

# The caller's credentials and identity claims stop here: the router says who it is.
_DROP_REQUEST = HOP_BY_HOP | {
    "host",
    "authorization",
    "expect",
    TENANT_HEADER.lower(),
    ADMIN_HEADER.lower(),
}
_DROP_RESPONSE = HOP_BY_HOP | {"date", "server", REQUEST_ID_HEADER.lower()}


class BatchNotConfigured(ApiError):
    """404: this router forwards no batch API (no ``--batch-url``)."""

    status = 404

    def __init__(self) -> None:
        super().__init__(
            "this router has no batch service (--batch-url)", code="batch_not_configured"
        )


class BatchUnavailable(UpstreamError):
    """502: the batch service did not answer."""

    def __init__(self, why: str) -> None:
        super().__init__(f"The batch service is unreachable: {why}", code="batch_unavailable")


def batch_tenant(request: web.Request) -> str | None:
    """The tenant the batch service is told: the caller's key's, None for the admin token."""
    if access_of(request) >= Access.KEY:  # the admin BearerAuth's only key: --admin-token
        return None
    return tenant_of(request).name


def forwarded_headers(
    request: web.Request, *, token: str | None, tenant: str | None, request_id: str
) -> CIMultiDict[str]:
    """The client's end-to-end headers, less its credentials and identity claims, plus the
    router's: the batch token, the tenant, the request id, ``X-Forwarded-For``."""
    source = request.headers
    listed = connection_tokens(source.get("Connection"))
    headers: CIMultiDict[str] = CIMultiDict()
    for key, value in source.items():
        lower = key.lower()
        if lower not in _DROP_REQUEST and lower not in listed:
            headers.add(key, value)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if tenant is not None:
        headers[TENANT_HEADER] = tenant
    headers[REQUEST_ID_HEADER] = request_id
    prior = source.get("X-Forwarded-For")
    peer = request.remote or ""
    headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    return headers


async def _chunks(request: web.Request) -> AsyncIterator[bytes]:
    """The request body as it arrives, ``CHUNK_BYTES`` at most at a time."""
    async for chunk in request.content.iter_chunked(CHUNK_BYTES):
        yield chunk


class BatchProxy:
    """The handler of the batch paths; :meth:`start` before, :meth:`close` after."""

    def __init__(self, settings: RouterSettings) -> None:
        self._base = settings.batch_url
        token = settings.batch_token
        self._token = token.get_secret_value() if token is not None else None
        self._access_log = settings.access_log
        # No total: an upload or a download may take long; a silent service is caught by
        # the connect timeout and by --proxy-timeout between reads.
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=settings.proxy_connect_timeout, sock_read=settings.proxy_timeout
        )
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._base is not None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        rid = request_id(request)
        status = 499
        reason: str | None = None
        try:
            response = await self._forward(request, rid)
            status = response.status
            return response
        except ApiError as error:
            status, reason = error.status, error.code
            raise
        finally:
            if self._access_log and access_log_enabled():
                log_access(
                    AccessEntry(
                        request_id=rid,
                        method=request.method,
                        path=request.path,
                        model=None,
                        tenant=batch_tenant(request) or "admin",
                        priority="standard",
                        status=status,
                        backend="batch",
                        queue_wait_s=0.0,
                        hold_s=0.0,
                        duration_s=time.monotonic() - started,
                        prompt_tokens=None,
                        completion_tokens=None,
                        stream=False,
                        reason=reason,
                    )
                )

    async def _forward(self, request: web.Request, rid: str) -> web.StreamResponse:
        session = self._session
        if self._base is None or session is None:
            raise BatchNotConfigured()
        headers = forwarded_headers(
            request, token=self._token, tenant=batch_tenant(request), request_id=rid
        )
        url = self._base + request.rel_url.raw_path_qs  # the client's path and query, as sent
        body = _chunks(request) if request.body_exists else None
        try:
            upstream = await session.request(
                request.method, url, data=body, headers=headers,
                timeout=self._timeout, allow_redirects=False,
            )  # fmt: skip
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise BatchUnavailable(type(exc).__name__) from None
        try:
            return await self._relay(request, upstream)
        finally:
            upstream.release()

    async def _relay(
        self, request: web.Request, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        source = upstream.headers
        listed = connection_tokens(source.get("Connection"))
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for key, value in source.items():
            lower = key.lower()
            if lower not in _DROP_RESPONSE and lower not in listed:
                response.headers.add(key, value)
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_chunked(CHUNK_BYTES):
                await response.write(chunk)
        except (aiohttp.ClientError, OSError, TimeoutError):
            # Headers are out: all that is left is to cut the answer short.
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response


def is_batch_path(request: web.Request) -> bool:
    """``/v1/files*`` and ``/v1/batches*``: where the admin token also passes (as admin)."""
    path = request.path
    return any(path == p or path.startswith(p + "/") for p in ("/v1/files", "/v1/batches"))
