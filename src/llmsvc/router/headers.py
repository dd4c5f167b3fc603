"""Which headers cross the router: end-to-end ones pass, hop-by-hop ones stop (RFC 9110 §7.6.1)."""

from __future__ import annotations

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

BACKEND_HEADER = "X-Llmsvc-Backend"

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# The router has read the whole body already: no ``Expect: 100-continue`` upstream.
_DROP_REQUEST = _HOP_BY_HOP | {
    "host",
    "content-length",
    "expect",
    "x-forwarded-for",
    "x-forwarded-proto",
}
_DROP_RESPONSE = _HOP_BY_HOP | {"content-length", "date", "server"}


def _connection_tokens(value: str | None) -> frozenset[str]:
    """Header names a ``Connection`` header lists: hop-by-hop for this hop only."""
    if not value:
        return frozenset()
    return frozenset(t.strip().lower() for t in value.split(",") if t.strip())


def upstream_headers(request: web.Request, *, drop_auth: bool) -> CIMultiDict[str]:
    """The end-to-end request headers plus ``X-Forwarded-For``/``-Proto``."""
    source = request.headers
    listed = _connection_tokens(source.get("Connection"))
    headers: CIMultiDict[str] = CIMultiDict()
    for key, value in source.items():
        lower = key.lower()
        if lower in _DROP_REQUEST or lower in listed or (drop_auth and lower == "authorization"):
            continue
        headers.add(key, value)
    prior = source.get("X-Forwarded-For")
    peer = request.remote or ""
    headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    headers["X-Forwarded-Proto"] = request.scheme
    if "Content-Type" not in headers:
        headers["Content-Type"] = "application/json"
    return headers


def downstream_headers(upstream: aiohttp.ClientResponse, backend: str) -> CIMultiDict[str]:
    """The upstream's end-to-end response headers plus ``X-Llmsvc-Backend``."""
    source = upstream.headers
    listed = _connection_tokens(source.get("Connection"))
    headers: CIMultiDict[str] = CIMultiDict()
    for key, value in source.items():
        lower = key.lower()
        if lower not in _DROP_RESPONSE and lower not in listed:
            headers.add(key, value)
    headers[BACKEND_HEADER] = backend
    return headers
