"""Which headers cross the router: end-to-end ones pass, hop-by-hop ones stop (RFC 9110 §7.6.1).

``Content-Encoding`` and ``Content-Length`` stop too: the body forwarded is the one
``jsonio.read_body`` decoded, and its length is set anew. A request whose headers
together exceed ``--max-header-bytes`` is refused (431) before anything is sent.
"""

from __future__ import annotations

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from llmsvc.core.errors import ApiError

BACKEND_HEADER = "X-Llmsvc-Backend"

HOP_BY_HOP = frozenset(  # RFC 9110 §7.6.1; the batch proxy drops them too
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
_DROP_REQUEST = HOP_BY_HOP | {
    "host",
    "content-length",
    "content-encoding",
    "expect",
    "x-forwarded-for",
    "x-forwarded-proto",
}
_DROP_RESPONSE = HOP_BY_HOP | {"content-length", "date", "server"}


def connection_tokens(value: str | None) -> frozenset[str]:
    """Header names a ``Connection`` header lists: hop-by-hop for this hop only."""
    if not value:
        return frozenset()
    return frozenset(t.strip().lower() for t in value.split(",") if t.strip())


def check_header_size(request: web.Request, limit: int) -> None:
    """431 in the OpenAI shape when the request's header lines exceed ``limit`` bytes in all
    (names, values and each line's ``": "`` and CRLF, as nginx counts them)."""
    size = sum(len(name) + len(value) + 4 for name, value in request.raw_headers)
    if size > limit:
        raise ApiError(
            f"Request headers too large: {size} bytes exceed the limit of {limit} bytes",
            status=431,
            code="headers_too_large",
        )


def upstream_headers(request: web.Request, *, drop_auth: bool) -> CIMultiDict[str]:
    """The end-to-end request headers plus ``X-Forwarded-For``/``-Proto``."""
    source = request.headers
    listed = connection_tokens(source.get("Connection"))
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
    listed = connection_tokens(source.get("Connection"))
    headers: CIMultiDict[str] = CIMultiDict()
    for key, value in source.items():
        lower = key.lower()
        if lower not in _DROP_RESPONSE and lower not in listed:
            headers.add(key, value)
    headers[BACKEND_HEADER] = backend
    return headers
